"""The process's surroundings: device and precision choice, seeding, determinism, the host-sync check and
provenance for summary.json."""
from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

import runner
from runner.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto: CUDA when present; a torchrun worker's GPU is the one of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA device is visible; use trainer.device=cpu or auto")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def resolved_precision(precision: str, device: torch.device) -> str:
    """trainer.precision with `auto` resolved: bf16 on CUDA, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic  # benchmark picks kernels by timing: not reproducible
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = not deterministic
    torch.backends.cudnn.allow_tf32 = not deterministic


class SyncCheck:
    """`trainer.sync_debug`: a reusable context that runs its block under torch.cuda.set_sync_debug_mode
    (`warn` or `error`), so an operation that makes the host wait on the GPU inside a training step warns or
    raises where it happens. A no-op for None and off CUDA, where nothing waits on a device."""

    def __init__(self, mode: str | None, device: torch.device):
        self.mode = mode if device.type == "cuda" else None
        self.previous = 0

    def __enter__(self) -> None:
        if self.mode:
            self.previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(self.mode)

    def __exit__(self, *exc) -> None:
        if self.mode:
            torch.cuda.set_sync_debug_mode(self.previous)


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(runner.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def provenance(device: str, world_size: int = 1) -> dict:
    return {"git_commit": git_commit(), "divrun_version": runner.__version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(), "host": platform.node(), "device": device,
            "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
            "world_size": world_size}
