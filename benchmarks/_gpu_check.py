"""The Python half of `make gpu-check` (benchmarks/gpu_check.sh runs the stages) and `make gpu-wheels`.

    python -m benchmarks._gpu_check wheels [--dest .gpu]          # the wheels the GPU image lacks, the data, sizes
    python -m benchmarks._gpu_check verify --target DIR --wheels DIR  # what the install stage put where
    python -m benchmarks._gpu_check airbench --data DIR --out FILE [--runs N] [--smoke]
    python -m benchmarks._gpu_check report --work DIR --results DIR   # one JSON and one RESULTS.md fragment

The GPU machine (one H200, see README "Running the GPU check") starts bare from an image with Python 3.12,
torch 2.11, torchvision, numpy, scipy, pandas, matplotlib, rich, scikit-learn, pytest, PyYAML, Pillow,
packaging, tabulate and colorama, and reaches no package index: what divrun needs beyond that travels as
wheels with the tree, 64 MiB per call in all.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

REPO = Path(__file__).resolve().parents[1]
TRANSFER_LIMIT = 64 * 2**20  # the tree, the wheels and the data together, per device call

# What the GPU image lacks and divrun needs, at the versions divrun is tested with here. wandb, datasets and
# optuna stay out: the check runs with logger.wandb.mode=disabled, and the training path imports none of them
# (`verify` fails if it starts to).
PINS = {
    "hydra-core": "1.3.8", "omegaconf": "2.3.1", "antlr4-python3-runtime": "4.9.3",  # the config system
    "bitsandbytes": "0.50.2",  # optimizer=adamw8bit / lion8bit: the 8-bit CUDA tests
    # the optimizers' official packages: benchmarks/optimizers.py's reference rows (the `ref` extra)
    "adamp": "0.3.0", "torch-optimizer": "0.3.0", "pytorch-ranger": "0.1.1", "sgd-sai": "1.0.3",
    "adabelief-pytorch": "0.2.1",
}
IMPORT_NAMES = {"hydra-core": "hydra", "antlr4-python3-runtime": "antlr4", "torch-optimizer": "torch_optimizer",
                "pytorch-ranger": "pytorch_ranger", "sgd-sai": "sgd_sai", "adabelief-pytorch": "adabelief_pytorch"}
PLATFORM_WHEELS = {"bitsandbytes"}  # compiled: fetched for the device's platform; the rest are pure Python
DEVICE_PLATFORMS = ["manylinux_2_24_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
# bitsandbytes ships one library per CUDA release (41 MiB packed); the image's torch is built for CUDA 13.0,
# so the wheel keeps that library and the CPU one (GPU_BNB_LIBS=cuda130,cuda132,... keeps others)
BNB_LIBS = os.environ.get("GPU_BNB_LIBS", "cpu,cuda130").split(",")
NOT_ON_TRAINING_PATH = ("optuna", "wandb", "datasets")
SHARED_DATA = REPO.parent / "shared" / "data"
DATA_FILES = ("cifar10-jpeg.tar.xz", "prepare_cifar10.py")
AIRBENCH_A100_S, AIRBENCH_ACC, TIME_SLACK, OVERHEAD_TARGET = 3.83, 94.0, 1.3, 1.05


def mib(size: float) -> str:
    return f"{size / 2**20:.1f} MiB"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_project(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return normalized(name), version


# ---- make gpu-wheels ---------------------------------------------------------------------------------------
def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "-q", *args], check=True)


def fetch_wheels(folder: Path) -> None:
    """Each pin as one wheel in `folder` (stale versions removed): compiled ones for the device's platform,
    pure-Python ones as downloaded or built from their sdist (antlr4's runtime and adamp ship sdists only)."""
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {normalized(name): version for name, version in PINS.items()}
    for wheel in folder.glob("*.whl"):
        name, version = wheel_project(wheel)
        if wanted.get(name) != version:
            wheel.unlink()
    have = {wheel_project(wheel)[0] for wheel in folder.glob("*.whl")}
    for name, version in PINS.items():
        if normalized(name) in have:
            continue
        print(f"fetching {name}=={version}", flush=True)
        if name in PLATFORM_WHEELS:
            platforms = [arg for platform in DEVICE_PLATFORMS for arg in ("--platform", platform)]
            pip("download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                *platforms, "-d", str(folder), f"{name}=={version}")
        else:
            pip("wheel", "--no-deps", "-w", str(folder), f"{name}=={version}")
    for wheel in folder.glob("*.whl"):
        tags = wheel.name.removesuffix(".whl").split("-")[-3:]
        if not (tags[0].startswith(("py3", "py2.py3", "cp312")) and (tags[2] == "any" or "x86_64" in tags[2])):
            raise SystemExit(f"{wheel.name}: not installable on the device (CPython 3.12, x86-64 manylinux)")
    for wheel in folder.glob("bitsandbytes-*.whl"):
        slim_bitsandbytes(wheel)


def slim_bitsandbytes(wheel: Path) -> None:
    """Rewrite the wheel without the native libraries of other CUDA/ROCm/XPU releases (RECORD updated)."""
    keep = {f"libbitsandbytes_{lib}.so" for lib in BNB_LIBS}
    is_dropped = lambda name: re.fullmatch(r"bitsandbytes/libbitsandbytes_\w+\.so", name) and \
        name.split("/")[-1] not in keep
    with zipfile.ZipFile(wheel) as source:
        names = source.namelist()
        if not any(is_dropped(name) for name in names):
            return
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
            for name in names:
                if is_dropped(name):
                    continue
                data = source.read(name)
                if name.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = ("\n".join(line for line in lines if not is_dropped(line.split(",")[0])) + "\n").encode()
                target.writestr(source.getinfo(name), data)
    slim.replace(wheel)
    print(f"{wheel.name}: kept libbitsandbytes_{{{','.join(BNB_LIBS)}}}.so")


def copy_data(folder: Path) -> bool:
    """The real CIFAR-10 (a JPEG archive and the script that unpacks it) from ../shared/data, when present."""
    if not all((SHARED_DATA / name).exists() for name in DATA_FILES):
        return False
    folder.mkdir(parents=True, exist_ok=True)
    for name in DATA_FILES:
        source, copy = SHARED_DATA / name, folder / name
        if not copy.exists() or copy.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, copy)
    return True


def tree_bytes() -> int:
    """What a device call sends besides the carried folder: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


def wheels(dest: Path) -> None:
    fetch_wheels(dest / "wheels")
    has_data = copy_data(dest / "data")
    files = sorted((dest / "wheels").glob("*.whl"))
    wheel_size = sum(f.stat().st_size for f in files)
    data_size = sum(f.stat().st_size for f in (dest / "data").glob("*")) if has_data else 0
    tree = tree_bytes()
    for f in files:
        print(f"  {f.name:<62} {mib(f.stat().st_size):>9}")
    print(f"wheels ({dest / 'wheels'}): {len(files)} files, {mib(wheel_size)}")
    print(f"data ({dest / 'data'}): {mib(data_size)}" if has_data else
          f"data: none ({SHARED_DATA} is absent; the airbench stage then needs GPU_CHECK_CIFAR=<folder with "
          f"cifar-10-batches-py>)")
    print(f"tree (tracked and untracked files that travel): {mib(tree)}")
    total = wheel_size + data_size + tree
    print(f"total per device call: {mib(total)} of {mib(TRANSFER_LIMIT)}")
    if total > TRANSFER_LIMIT:
        raise SystemExit(f"over the {mib(TRANSFER_LIMIT)} a device call carries: drop a wheel or the data")


# ---- the install stage's check -----------------------------------------------------------------------------
def verify(target: Path, wheel_folder: Path) -> None:
    """divrun and every wheel's package import from the target folder; the training path leaves wandb,
    datasets and optuna unimported (the device has none of them)."""
    import importlib
    import importlib.metadata

    target = target.resolve()
    for module in ("runner.cli", "runner.job", "runner.train", "runner.optim", "runner.tables.cli"):
        importlib.import_module(module)
    leaked = [name for name in NOT_ON_TRAINING_PATH if name in sys.modules]
    if leaked:
        raise SystemExit(f"the training path imports {', '.join(leaked)} at module level; import it where it is "
                         f"used (the GPU image has none of {', '.join(NOT_ON_TRAINING_PATH)})")
    shipped = {wheel_project(wheel)[0] for wheel in wheel_folder.glob("*.whl")} if wheel_folder.is_dir() else set()
    wrong = []
    for project in ["divrun", *PINS]:
        module = importlib.import_module(IMPORT_NAMES.get(project, project) if project != "divrun" else "runner")
        where = Path(module.__file__).resolve()
        inside = target in where.parents
        version = importlib.metadata.version(project)
        print(f"  {project:<24} {version:<12} {'target' if inside else 'environment'}: {where.parent}")
        if (project == "divrun" or normalized(project) in shipped) and not inside:
            wrong.append(project)
    import torch

    print(f"  torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}")
    if wrong:
        raise SystemExit(f"not imported from {target}: {', '.join(wrong)}")
    if not shipped:
        print(f"no wheels in {wheel_folder}: third-party packages come from this environment")


# ---- the airbench stage ------------------------------------------------------------------------------------
def airbench_protocol(data: Path) -> list[str]:
    """recipes/airbench.yaml's protocol (from the installed package) with the data folder filled in."""
    import importlib.resources

    import yaml

    recipe = yaml.safe_load((importlib.resources.files("runner.recipes") / "airbench.yaml").read_text())
    return [item.replace("${data:}", str(data)) for item in recipe["protocol"]]


def training_seconds(run_dir: Path, batch: int) -> tuple[float, float]:
    """(seconds in the training loop, what the same steps take at the loop's steady rate): the sum of the
    logging intervals (steps x batch / images per second), and the steps over the median rate of the intervals
    after the first (which holds cudnn's autotuning and the first allocations)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/img_per_s" in r]
    steps = [r["step"] - previous["step"] for previous, r in zip([{"step": 0}] + train, train)]
    seconds = sum(n * batch / r["train/img_per_s"] for n, r in zip(steps, train))
    rates = [r["train/img_per_s"] for r in train[1:]] or [train[0]["train/img_per_s"]]
    return seconds, sum(steps) * batch / statistics.median(rates)


def airbench(data: Path, out: Path, runs: int, smoke: bool) -> None:
    """`runs` seeds of the airbench94 recipe on the real CIFAR-10, each one `divrun` process, on CUDA; with
    --smoke a few CPU steps that only exercise this code (the rehearsal)."""
    protocol = airbench_protocol(data)
    budget = (["dataset.limit_train=512", "dataset.limit_val=200", "trainer.batch_size=128", "trainer.max_steps=3",
               "optimizer.base_overrides.lr=0.1875", "trainer.device=cpu"] if smoke else ["trainer.device=cuda"])
    batch = 128 if smoke else next(int(o.split("=")[1]) for o in protocol if o.startswith("trainer.batch_size="))
    results = []
    for seed in range(1 if smoke else runs):
        run_dir = out.parent / "airbench" / f"seed{seed}"
        shutil.rmtree(run_dir, ignore_errors=True)
        command = [sys.executable, "-m", "runner.cli", *protocol, *budget, f"seed={seed}", f"hydra.run.dir={run_dir}",
                   "logger.progress=false", "logger.wandb.mode=disabled"]
        finished = subprocess.run(command, env={**os.environ, "WANDB_MODE": "disabled"}).returncode == 0
        summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
        if not finished or summary.get("status") != "finished":
            raise SystemExit(f"airbench seed {seed}: {summary.get('status', 'no summary')} {summary.get('error', '')}")
        train_s, steady_s = training_seconds(run_dir, batch)
        results.append({"seed": seed, "acc1": 100 * summary["final_val_acc1"], "train_s": train_s,
                        "steady_s": steady_s, "wall_s": summary["wall_time_s"], "steps": summary["steps"],
                        "device": summary.get("device_name") or summary.get("device")})
        print(f"seed {seed}: top-1 {results[-1]['acc1']:.2f}%  train {train_s:.2f} s  steady {steady_s:.2f} s  "
              f"wall {summary['wall_time_s']:.1f} s", flush=True)
    acc = [r["acc1"] for r in results]
    report = {"runs": results, "n": len(results), "mean_acc1": statistics.mean(acc),
              "std_acc1": statistics.stdev(acc) if len(acc) > 1 else None,
              "mean_train_s": statistics.mean(r["train_s"] for r in results),
              "mean_steady_s": statistics.mean(r["steady_s"] for r in results),
              "mean_wall_s": statistics.mean(r["wall_s"] for r in results), "smoke": smoke,
              "reference": {"airbench94_a100_s": AIRBENCH_A100_S, "acc1": 94.01},
              "target": {"train_s": round(TIME_SLACK * AIRBENCH_A100_S, 2), "acc1": AIRBENCH_ACC}}
    out.write_text(json.dumps(report, indent=1))
    if smoke:
        print("skipped: no CUDA (the recipe ran 3 CPU steps to rehearse this stage)")
        raise SystemExit(77)


# ---- the report --------------------------------------------------------------------------------------------
def read_stages(work: Path) -> list[dict]:
    stages = []
    path = work / "stages.tsv"
    for line in path.read_text().splitlines() if path.exists() else []:
        name, status, seconds, limit, note = (line.split("\t") + [""] * 5)[:5]
        stages.append({"stage": name, "status": status, "seconds": int(seconds), "limit_s": int(limit), "note": note})
    return stages


def read_junit(path: Path) -> dict:
    """Outcome counts and the failing tests (with the first line of their message) of a pytest junit file."""
    if not path.exists():
        return {}
    outcomes, failures = {"passed": 0, "failed": 0, "skipped": 0}, []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rpartition('.')[2]}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            outcomes["failed"] += 1
            failures.append({"test": name, "message": (problem.get("message") or "").splitlines()[0][:300]
                             if problem.get("message") else ""})
        elif case.find("skipped") is not None:
            outcomes["skipped"] += 1
        else:
            outcomes["passed"] += 1
    return {**outcomes, "failures": failures}


def bench_sections(work: Path) -> dict:
    sections = {}
    for path in sorted(work.glob("bench_*.json")):
        for name, module in json.loads(path.read_text())["modules"].items():
            sections[name] = module
    return sections


def callouts(results: dict) -> list[str]:
    """Every number that misses its target, in words."""
    lines = []
    for row in results["bench"].get("runner_overhead", {}).get("rows", []):
        if row.get("device") == "cuda" and row["ratio"] > OVERHEAD_TARGET:
            lines.append(f"runner_overhead {row['model']} on CUDA: {row['ratio']:.2f}x per epoch misses the "
                         f"<= {OVERHEAD_TARGET}x target")
    air = results.get("airbench")
    if air and not air.get("smoke"):
        target = air["target"]
        if air["mean_acc1"] < target["acc1"]:
            lines.append(f"airbench: mean top-1 {air['mean_acc1']:.2f}% (n={air['n']}) is under {target['acc1']}% "
                         f"(this CIFAR-10 copy is JPEG-compressed: published accuracies land a little lower)")
        if air["mean_train_s"] > target["train_s"]:
            lines.append(f"airbench: {air['mean_train_s']:.2f} s of training misses {target['train_s']} s "
                         f"(1.3 x airbench94's 3.83 s on an A100)")
    for stage in ("tests", "sync"):
        for failure in results["pytest"].get(stage, {}).get("failures", []):
            lines.append(f"{stage}: {failure['test']} failed: {failure['message']}")
    lines += [f"stage {s['stage']} {s['status']}: {s['note']}" for s in results["stages"] if s["status"] in
              ("failed", "timeout")]
    return lines


def markdown(results: dict) -> str:
    from benchmarks.__main__ import markdown_table

    env = results["env"]
    gpu = env.get("gpu") or "no GPU"
    head = [f"## CUDA: `make gpu-check` ({gpu})", "",
            f"Machine: {gpu}{', driver ' + env['driver'] if env.get('driver') else ''}; torch {env.get('torch')} "
            f"(CUDA {env.get('cuda')}); Python {env.get('python')}; {env.get('date')}; budget {results['budget_s']} s, "
            f"the stages took {results['elapsed_s']} s (the data stage runs beside the others)."
            + (" Rehearsal on the CPU (DRY=1): CUDA stages skipped." if results["dry_run"] else ""), "",
            markdown_table([{k: v for k, v in s.items()} for s in results["stages"]]), ""]
    misses = callouts(results)
    head += ["**Misses its target:**", "", *[f"- {line}" for line in misses], ""] if misses else \
        (["Every number meets its target.", ""] if not results["dry_run"] else [])
    for stage, title in (("tests", "CUDA tests"), ("sync", "No host sync in a training step")):
        junit = results["pytest"].get(stage)
        if junit:
            head += [f"### {title}", "", f"{junit['passed']} passed, {junit['failed']} failed, {junit['skipped']} "
                     f"skipped.", ""]
    air = results.get("airbench")
    if air and not air.get("smoke"):
        head += ["### airbench94 recipe on the real CIFAR-10 (JPEG copy)", "",
                 "Each seed is one `divrun` process with recipes/airbench.yaml's protocol. `train_s`: the training "
                 "loop's logging intervals summed (cudnn autotuning in the first); `steady_s`: the same 475 steps at "
                 "the median rate of the later intervals; `wall_s`: summary.json's wall time (data to the GPU, "
                 "whitening, TTA evaluation, checkpoint).", "", markdown_table(air["runs"]), "",
                 f"Mean top-1 {air['mean_acc1']:.2f}% (n={air['n']}{', std %.2f' % air['std_acc1'] if air['std_acc1'] else ''}), "
                 f"training {air['mean_train_s']:.2f} s (steady {air['mean_steady_s']:.2f} s), against airbench94's "
                 f"94.01% in {AIRBENCH_A100_S} s on an A100 (target: >= {AIRBENCH_ACC}% within "
                 f"{air['target']['train_s']} s).", ""]
    for name, module in results["bench"].items():
        if module["rows"]:
            head += [f"### {name} (CUDA)", "", module["doc"], "", markdown_table(module["rows"]), ""]
    return "\n".join(head)


def report(work: Path, results_dir: Path, budget: int, dry_run: bool, elapsed: int | None = None) -> None:
    env_file, air_file = work / "env.json", work / "airbench.json"
    stages = read_stages(work)
    results = {"budget_s": budget, "dry_run": dry_run, "stages": stages,
               "elapsed_s": elapsed if elapsed is not None else sum(s["seconds"] for s in stages),
               "env": json.loads(env_file.read_text()) if env_file.exists() else {},
               "pytest": {stage: read_junit(work / f"{stage}.xml") for stage in ("tests", "sync")},
               "airbench": json.loads(air_file.read_text()) if air_file.exists() else None,
               "bench": bench_sections(work)}
    results["misses"] = callouts(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    (results_dir / "gpu_check.md").write_text(markdown(results))
    with open(results_dir / "gpu_check.log", "w") as log:
        for stage in results["stages"]:
            path = work / "logs" / f"{stage['stage'].replace(':', '_')}.log"
            log.write(f"==== {stage['stage']}: {stage['status']} in {stage['seconds']} s\n")
            log.write(path.read_text(errors="replace") if path.exists() else "(no log)\n")
    print(f"wrote {results_dir}/gpu_check.json, gpu_check.md, gpu_check.log")
    for line in results["misses"]:
        print(f"MISS: {line}")


def environment(out: Path) -> None:
    """The env stage: what this machine is (written for the report, printed for the log)."""
    import datetime
    import platform

    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "gpus": torch.cuda.device_count(), "cpus": os.cpu_count(), "date": datetime.date.today().isoformat()}
    smi = shutil.which("nvidia-smi")
    if smi and info["gpu"]:
        query = subprocess.run([smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True)
        info["driver"] = query.stdout.strip().splitlines()[0] if query.returncode == 0 and query.stdout else None
    out.write_text(json.dumps(info, indent=1))
    print(" ".join(f"{key}={value}" for key, value in info.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("wheels").add_argument("--dest", type=Path, default=REPO / ".gpu")
    check = commands.add_parser("verify")
    check.add_argument("--target", type=Path, required=True)
    check.add_argument("--wheels", type=Path, required=True)
    commands.add_parser("env").add_argument("--out", type=Path, required=True)
    air = commands.add_parser("airbench")
    air.add_argument("--data", type=Path, required=True)
    air.add_argument("--out", type=Path, required=True)
    air.add_argument("--runs", type=int, default=3)
    air.add_argument("--smoke", action="store_true")
    summary = commands.add_parser("report")
    summary.add_argument("--work", type=Path, required=True)
    summary.add_argument("--results", type=Path, required=True)
    summary.add_argument("--budget", type=int, default=0)
    summary.add_argument("--elapsed", type=int, help="seconds the stages took (the background ones overlap)")
    summary.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.command == "wheels":
        wheels(args.dest)
    elif args.command == "verify":
        verify(args.target, args.wheels)
    elif args.command == "env":
        environment(args.out)
    elif args.command == "airbench":
        airbench(args.data, args.out, args.runs, args.smoke)
    else:
        report(args.work, args.results, args.budget, args.dry_run, args.elapsed)


if __name__ == "__main__":
    main()
