"""Gradient accumulation: time per sample of divrun's train step with trainer.batch_size=256
trainer.accumulate=4 against one batch of 1024 (the same global batch and update), on synthetic CIFAR-sized
data; the two alternate, best of repeats, each over the same steps. Target: ratio <= 1.05x on the CPU."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from runner.checkpoint import Checkpointer
from runner.logger import RunLogger
from runner.train import Trainer

CASES = [("small_cnn", 5), ("resnet20", 3)]  # model, repeats
STEPS = 4


def trainer_for(model: str, batch: int, accumulate: int, device: str, folder: Path) -> Trainer:
    from runner.config import compose

    cfg = compose(f"model={model}", "dataset=synthetic", "dataset.image_size=32", "dataset.train_size=6144",
                  "dataset.val_size=64", f"trainer.batch_size={batch}", f"trainer.accumulate={accumulate}",
                  f"trainer.device={device}", "logger.progress=false", "logger.wandb.mode=disabled")
    return Trainer(cfg, folder, RunLogger(cfg, folder, "bench", None, enabled=False), Checkpointer(folder, enabled=False))


def step_time(trainer: Trainer) -> float:
    """Seconds per step over STEPS steps (after one warm-up step)."""
    batches = trainer.train_loader.epoch(0)
    images, targets, indices = next(batches)
    trainer.train_step(images, targets, indices)
    data = [next(batches) for _ in range(STEPS)]
    if trainer.rt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images, targets, indices in data:
        row = trainer.train_step(images, targets, indices)
    row.tolist()  # wait for the device
    return (time.perf_counter() - start) / STEPS


def run(quick: bool) -> list[dict]:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for model, repeats in CASES[:1] if quick else CASES:
            with tempfile.TemporaryDirectory() as folder:
                large = trainer_for(model, 1024, 1, device, Path(folder))
                micro = trainer_for(model, 256, 4, device, Path(folder))
                best_large = best_micro = float("inf")
                for _ in range(repeats):
                    best_large = min(best_large, step_time(large))
                    best_micro = min(best_micro, step_time(micro))
            rows.append({"model": model, "device": device, "batch 1024: ms/sample": 1e3 * best_large / 1024,
                         "256 x 4 accumulated: ms/sample": 1e3 * best_micro / 1024, "ratio": best_micro / best_large})
    return rows
