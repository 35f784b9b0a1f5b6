# Every target sets up .venv on first use, so each works alone on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test bench reproduce-table compare-demo gpu-wheels gpu-check clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/divrun

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

# make reproduce-table [TABLE=name|recipe.yaml] [SCALE=full|smoke] [SEEDS=n] [DATA=dir] [TABLE_ARGS="--jobs 2 ..."]
# Without TABLE: the list of tables, their cells and cost.
reproduce-table: $(STAMP)
	$(BIN)/python -m runner.tables $(TABLE) $(if $(SCALE),--scale $(SCALE)) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(DATA),--data $(DATA)) $(TABLE_ARGS)

# make gpu-wheels: what the GPU machine's image lacks and divrun needs, as pinned wheels in .gpu/wheels (and the
# real CIFAR-10 into .gpu/data when ../shared/data has it); prints the sizes against the 64 MiB a call carries.
gpu-wheels: $(STAMP)
	$(BIN)/python -m benchmarks._gpu_check wheels

# make gpu-check [DRY=1]: the CUDA tests, the host-sync check, airbench94 and make bench's CUDA rows, each stage
# under its own timeout (benchmarks/gpu_check.sh, which runs with bash alone on the GPU machine). DRY=1 rehearses
# it on the CPU. Results: $$OUT, else outputs/gpu_check/.
gpu-check: $(STAMP)
	PYTHON=$(abspath $(BIN)/python) bash benchmarks/gpu_check.sh $(if $(DRY),--dry-run)

# README's "Comparing runs" example: a fresh sweep of three optimizers x three seeds on digits, then its comparison
EXAMPLE := outputs/example/compare-digits
compare-demo: $(STAMP)
	rm -rf $(EXAMPLE)/[0-9]*-optimizer=*
	$(BIN)/divrun -m optimizer=sgd,adamw,lion seed=0,1,2 trainer.epochs=10 logger.progress=false \
		hydra.sweep.dir=$(EXAMPLE) 'hydra.callbacks.compare.target="val/acc1=0.9"'

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
