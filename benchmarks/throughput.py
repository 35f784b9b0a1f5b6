"""Training throughput on CUDA through the `divrun` command: images/s of ResNet-18 (CIFAR variant, 11.2M
parameters) and ResNet-20 (0.27M) at batch 512 on 32x32 synthetic data with SGD, for fp32 eager mode (TF32
matrix units on, as divrun sets them) and for divrun's CUDA defaults, bf16 autocast with channels-last, without
and with `trainer.compile=true`. Each variant is one divrun process; its rate is the median of the logging
intervals after the first two (start-up, cudnn's autotuning, compilation). `ratio` is the variant's images/s
over fp32 eager's for the same model. CUDA only: no rows without a GPU."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import timed_devices

MODELS = ("resnet18", "resnet20")
VARIANTS = {"fp32 eager": ["trainer.precision=fp32", "trainer.channels_last=false", "trainer.compile=false"],
            "bf16 + channels_last": ["trainer.precision=bf16", "trainer.channels_last=true", "trainer.compile=false"],
            "bf16 + channels_last + compile": ["trainer.precision=bf16", "trainer.channels_last=true",
                                               "trainer.compile=true"]}
BATCH, LOG_EVERY, WARMUP_INTERVALS = 512, 10, 2


def divrun_rates(model: str, variant: list[str], steps: int) -> list[float]:
    """train/img_per_s of every logging interval of one divrun run on CUDA."""
    args = ["dataset=synthetic", "dataset.image_size=32", f"dataset.train_size={40 * BATCH}", "dataset.val_size=512",
            f"model={model}", "optimizer=sgd", f"trainer.batch_size={BATCH}", f"trainer.max_steps={steps}",
            f"trainer.log_every={LOG_EVERY}", "trainer.eval_every=1000", "trainer.checkpoint_every=null",
            "trainer.device=cuda", "logger.progress=false", "logger.wandb.mode=disabled", *variant]
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=cwd, check=True, capture_output=True,
                       env={**os.environ, "WANDB_MODE": "disabled"})
        [metrics] = Path(cwd).rglob("metrics.jsonl")
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        return [r["train/img_per_s"] for r in records if "train/img_per_s" in r]


def run(quick: bool) -> list[dict]:
    if "cuda" not in timed_devices():
        return []
    steps = 60 if quick else 100
    rows = []
    for model in MODELS:
        baseline = None
        for name, variant in VARIANTS.items():
            rate = statistics.median(divrun_rates(model, variant, steps)[WARMUP_INTERVALS:])
            baseline = baseline or rate
            rows.append({"device": "cuda", "model": model, "variant": name, "batch": BATCH, "steps": steps,
                         "images/s": rate, "ratio": rate / baseline})
    return rows
