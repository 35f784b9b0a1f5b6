"""Shared test helpers: run `divrun` in a subprocess or a job in-process, on tiny budgets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("HYDRA_FULL_ERROR", "1")
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
QUICK = ["trainer.epochs=2", "logger.progress=false", "trainer.device=cpu"]


def divrun(*args: str, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the installed `divrun` console script in `cwd` (so outputs/ lands there)."""
    exe = Path(sys.executable).with_name("divrun")
    result = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
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
