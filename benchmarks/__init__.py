"""Benchmarks: each module here exposes `run(quick: bool) -> list[dict]`; `python -m benchmarks` runs them all.

A module that times on several devices asks `timed_devices()` which ones (`python -m benchmarks --devices cuda`
keeps the CUDA rows alone, as `make gpu-check` does)."""
from __future__ import annotations

import torch

DEVICES: list[str] | None = None  # set by `--devices`; None: the CPU and, when present, CUDA


def timed_devices() -> list[str]:
    """The devices to time on: those `--devices` names (default cpu and cuda), less CUDA where there is none."""
    return [device for device in DEVICES or ["cpu", "cuda"] if device != "cuda" or torch.cuda.is_available()]
