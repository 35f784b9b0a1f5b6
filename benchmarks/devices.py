"""Data-parallel scaling: images/s of one process against N processes (every GPU; 2 gloo processes without
CUDA), same per-device batch, measured through the `divrun` command. The ratio is N-process throughput over
one-process throughput (ideal: N); on the CPU the processes share the same cores, so expect no gain there."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from runner import run_folder


def images_per_second(devices: int, quick: bool) -> float:
    on_cuda = torch.cuda.is_available()
    args = ["dataset=synthetic", "model=resnet20" if on_cuda else "model=small_cnn", f"trainer.devices={devices}",
            f"trainer.max_steps={30 if quick else 300}", "trainer.batch_size=128", "trainer.log_every=10",
            "logger.progress=false", "logger.wandb.mode=disabled", "dataset.image_size=32",
            "dataset.train_size=8192" if on_cuda else "dataset.train_size=2048"]
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run([str(Path(sys.executable).with_name("divrun")), *args], cwd=cwd, check=True, capture_output=True,
                       env={**os.environ, "WANDB_MODE": "disabled"})
        [summary] = Path(cwd).rglob(run_folder.SUMMARY)
        rates = [record.get("train/img_per_s") for record in run_folder.read_metrics(summary.parent)]
        rates = [r for r in rates if r is not None][1:]  # the first interval holds start-up (and compilation)
        return sum(rates) / len(rates)


def run(quick: bool) -> list[dict]:
    many = torch.cuda.device_count() if torch.cuda.is_available() else 2
    one, several = images_per_second(1, quick), images_per_second(many, quick)
    device = "cuda" if torch.cuda.is_available() else "cpu (gloo)"
    return [{"device": device, "processes": 1, "img_per_s": one, "ratio": 1.0},
            {"device": device, "processes": many, "img_per_s": several, "ratio": several / one}]
