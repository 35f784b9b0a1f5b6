"""Runner overhead: divrun against a minimal hand-written loop (forward, cross-entropy, backward, step) on
the same model, device-resident data, optimizer and batch size, both timed from dataset creation to the end
of training. On CUDA the loop uses what divrun's `auto` settings pick there, as a careful hand-written loop
would: bf16 autocast, channels-last model and batches, cudnn's benchmark autotuner, the fused optimizer. Each side runs SHORT and LONG epochs (alternating, best of repeats); the difference is the
time per epoch, the intercept the fixed per-run time. `ratio` is divrun's time per epoch over the loop's
(target <= 1.05x); `fixed ms` is divrun's fixed per-run time beyond the loop's, shown on its own rather than
spread over however many epochs a benchmark happens to run; `whole-run ratio` is the LONG run's total over
the loop's. `load` is the machine's 1-minute load average after the case (2 cores here: above ~2 other
processes shared them).

Per epoch, divrun does work the loop does not: an evaluation (64 images), the per-step statistics (loss,
accuracy, gradient L2 norm and non-finite check, one host sync per 10 steps), metrics and gradient-norm
records. Per run: lr_schedule.csv and .png (matplotlib, already imported: best of repeats), config.yaml,
summary.json and one fsynced checkpoint."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import timed_devices
from runner.data.datasets import synthetic
from runner.data.loaders import build_loaders
from runner.job import run_job
from runner.models import build_model
from runner.optim import build_optimizer

# model, image size, images per epoch, repeats of each budget
CASES = [("small_cnn", 16, 4096, 7), ("resnet20", 32, 2048, 5)]
SHORT, LONG = 1, 5  # epochs


def compose(model: str, image_size: int, epochs: int, train_size: int, device: str):
    from runner.config import compose as compose_config

    return compose_config(
        f"model={model}", "dataset=synthetic", f"dataset.image_size={image_size}",
        f"dataset.train_size={train_size}", "dataset.val_size=64", f"trainer.epochs={epochs}",
        "trainer.batch_size=128", f"trainer.device={device}", "logger.progress=false",
        "logger.wandb.mode=disabled", f"trainer.checkpoint_every={epochs}")


def time_divrun(cfg) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_job(cfg, Path(folder) / "run")
        return time.perf_counter() - start


def time_hand_written(cfg, device: torch.device) -> float:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    on_cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = on_cuda
    splits = synthetic(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    model = build_model(cfg.model, splits.in_channels, splits.num_classes)
    model.to(device, memory_format=torch.channels_last if on_cuda else torch.preserve_format)
    train, _ = build_loaders(splits, cfg.trainer.batch_size, 512, device, cfg.seed, 0, channels_last=on_cuda)
    optimizer = build_optimizer(cfg.optimizer, model)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if on_cuda else contextlib.nullcontext
    for epoch in range(cfg.trainer.epochs):
        for images, labels, _ in train.epoch(epoch):
            with autocast():
                loss = F.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_times(model: str, size: int, train_size: int, epochs: int, device: str, repeats: int) -> tuple[float, float]:
    """(loop, divrun) seconds for `epochs`, alternating the two, best of `repeats`."""
    cfg = compose(model, size, epochs, train_size, device)
    best_loop, best_divrun = float("inf"), float("inf")
    for _ in range(repeats):
        best_loop = min(best_loop, time_hand_written(cfg, torch.device(device)))
        best_divrun = min(best_divrun, time_divrun(cfg))
    return best_loop, best_divrun


def run(quick: bool) -> list[dict]:
    rows = []
    for device in timed_devices():
        for model, size, train_size, repeats in CASES:
            train_size, repeats = (1024, 2) if quick else (train_size, repeats)
            loop_short, divrun_short = best_times(model, size, train_size, SHORT, device, repeats)
            loop_long, divrun_long = best_times(model, size, train_size, LONG, device, repeats)
            loop_epoch, divrun_epoch = ((t_long - t_short) / (LONG - SHORT) for t_short, t_long in
                                        ((loop_short, loop_long), (divrun_short, divrun_long)))
            fixed = (divrun_long - LONG * divrun_epoch) - (loop_long - LONG * loop_epoch)
            rows.append({"device": device, "model": model, "images/epoch": train_size, "epochs": f"{SHORT}, {LONG}",
                         "hand-written s/epoch": loop_epoch, "divrun s/epoch": divrun_epoch,
                         "ratio": divrun_epoch / loop_epoch, "fixed ms": 1000 * fixed,
                         "whole-run ratio": divrun_long / loop_long, "load": round(os.getloadavg()[0], 1)})
    return rows
