"""Shared test helpers: run `divrun` in a subprocess or a job in-process, on tiny budgets."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QUICK = ["trainer.epochs=2", "logger.progress=false", "trainer.device=cpu"]
# `cuda`-marked tests run where torch sees a GPU (make gpu-check runs them); with this variable set they run on
# the CPU instead, to rehearse their logic on a machine without one
CUDA_TESTS_ON_CPU = "DIVRUN_CUDA_TESTS_ON_CPU"


def pytest_collection_modifyitems(config, items):
    cuda_tests = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda_tests or os.environ.get(CUDA_TESTS_ON_CPU):
        return
    import torch

    if not torch.cuda.is_available():
        for item in cuda_tests:
            item.add_marker(pytest.mark.skip(reason=f"no CUDA (make gpu-check runs these; {CUDA_TESTS_ON_CPU}=1 "
                                                    f"runs them on the CPU)"))


@pytest.fixture
def cuda_device():
    """The GPU a `cuda`-marked test trains on (the CPU under DIVRUN_CUDA_TESTS_ON_CPU=1)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def divrun_command() -> str:
    """The `divrun` console script beside this Python, else the one on PATH (an install with --target)."""
    beside = Path(sys.executable).with_name("divrun")
    return str(beside) if beside.exists() else shutil.which("divrun") or str(beside)


def divrun(*args: str, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `divrun` console script in `cwd` (so outputs/ lands there)."""
    result = subprocess.run([divrun_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    if check and result.returncode != 0:
        raise AssertionError(f"divrun {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def run_folders(root: Path) -> list[Path]:
    """Every run folder (one holding summary.json) under root/outputs."""
    return sorted(p.parent for p in (root / "outputs").rglob("summary.json"))


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def compose(*overrides: str):
    """The composed config for these overrides, as `divrun` would build it (no run folder)."""
    from runner.config import compose as compose_config

    return compose_config(*overrides)


def train(tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    """Run one job in-process into tmp_path/run; returns (summary, run_dir)."""
    from runner.job import run_job

    cfg = compose(*QUICK, *overrides)
    run_dir = tmp_path / "run"
    return run_job(cfg, run_dir), run_dir


@pytest.fixture
def shared_cifar(tmp_path_factory) -> Path:
    """The real CIFAR-10 from ../shared/data, unpacked once per session into pickle batches."""
    if not (SHARED_DATA / "prepare_cifar10.py").exists():
        pytest.skip(f"real CIFAR-10 needs {SHARED_DATA} (absent on users' machines)")
    root = tmp_path_factory.getbasetemp() / "cifar"
    if not (root / "cifar-10-batches-py").exists():
        subprocess.run([sys.executable, str(SHARED_DATA / "prepare_cifar10.py"), str(root)], check=True,
                       capture_output=True)
    return root


def write_run_folder(folder: Path, config: dict, summary: dict | None = None, records: list[dict] = (),
                     overrides: list[str] = (), choices: dict | None = None) -> Path:
    """A hand-written run folder as divrun and Hydra leave it: config.yaml, summary.json, metrics.jsonl and
    .hydra/{overrides,hydra}.yaml (None summary: a run that never wrote one)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    hydra = folder / ".hydra"
    hydra.mkdir(exist_ok=True)
    (hydra / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    (hydra / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {
        **(choices or {}), "hydra/launcher": "basic"}}}}))
    return folder
