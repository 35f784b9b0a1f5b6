"""Gradient accumulation: time per sample of divrun's train step with trainer.batch_size=256
trainer.accumulate=4 against one batch of 1024 (the same global batch and update), on synthetic CIFAR-sized
data; the two alternate, best of repeats, each over the same steps. Target: ratio <= 1.05x on the CPU."""
from __future__ import annotations

import time

import torch

from runner.build import Run, build_run

CASES = [("small_cnn", 5), ("resnet20", 3)]  # model, repeats
STEPS = 4


def run_for(model: str, batch: int, accumulate: int, device: str) -> Run:
    from runner.config import compose

    return build_run(compose(f"model={model}", "dataset=synthetic", "dataset.image_size=32", "dataset.train_size=6144",
                             "dataset.val_size=64", f"trainer.batch_size={batch}", f"trainer.accumulate={accumulate}",
                             f"trainer.device={device}", "logger.progress=false", "logger.wandb.mode=disabled"))


def step_time(run: Run) -> float:
    """Seconds per step of divrun's step over STEPS steps (after one warm-up step)."""
    batches = run.train_loader.epoch(0)
    run.step(*next(batches), 0)
    data = [next(batches) for _ in range(STEPS)]
    if run.runtime.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step, (images, targets, indices) in enumerate(data, start=1):
        row = run.step(images, targets, indices, step)
    row.tolist()  # wait for the device
    return (time.perf_counter() - start) / STEPS


def run(quick: bool) -> list[dict]:
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for model, repeats in CASES[:1] if quick else CASES:
            large, micro = run_for(model, 1024, 1, device), run_for(model, 256, 4, device)
            best_large = best_micro = float("inf")
            for _ in range(repeats):
                best_large = min(best_large, step_time(large))
                best_micro = min(best_micro, step_time(micro))
            rows.append({"model": model, "device": device, "batch 1024: ms/sample": 1e3 * best_large / 1024,
                         "256 x 4 accumulated: ms/sample": 1e3 * best_micro / 1024, "ratio": best_micro / best_large})
    return rows
