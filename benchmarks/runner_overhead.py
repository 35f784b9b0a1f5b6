"""Runner overhead: divrun's wall time per epoch divided by a minimal hand-written loop (forward,
cross-entropy, backward, step) on the same model, device-resident data, optimizer and batch size, both
timed from dataset creation to the end of training. Target: <= 1.05x. Alternating repeats, best of each
(more for the cheap case); `load` is the machine's 1-minute load average after the case (2 cores here:
above ~2 other processes shared them).

divrun's time includes the work the loop does not do: an evaluation each epoch (64 images), the per-step
statistics (loss, accuracy, gradient L2 norm and non-finite check, one host sync per 10 steps), metrics and
gradient-norm files, lr_schedule.csv and .png (matplotlib, already imported: best of repeats), config.yaml,
summary.json and one checkpoint (fsynced). With a ~15 ms step these fixed costs are what the ratio shows."""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from runner.data import build_loaders, synthetic
from runner.job import run_job
from runner.models import build_model
from runner.optim import build_optimizer

CASES = [("small_cnn", 16, 5), ("resnet20", 32, 3)]  # model, image size, repeats of the full budget


def compose(model: str, image_size: int, epochs: int, train_size: int, device: str):
    from hydra import compose as hydra_compose, initialize_config_module
    import runner.cli  # noqa: F401 - registers the divrun resolvers

    with initialize_config_module("runner.conf", version_base="1.3"):
        return hydra_compose("config", overrides=[
            f"model={model}", "dataset=synthetic", f"dataset.image_size={image_size}",
            f"dataset.train_size={train_size}", "dataset.val_size=64", f"trainer.epochs={epochs}",
            "trainer.batch_size=128", f"trainer.device={device}", "logger.progress=false",
            "logger.wandb.mode=disabled", f"trainer.checkpoint_every={epochs}"])


def time_divrun(cfg) -> float:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_job(cfg, Path(folder) / "run")
        return time.perf_counter() - start


def time_hand_written(cfg, device: torch.device) -> float:
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    splits = synthetic(**{k: v for k, v in cfg.dataset.items() if k != "_target_"})
    model = build_model(cfg.model, splits.in_channels, splits.num_classes).to(device)
    train, _ = build_loaders(splits, cfg.trainer.batch_size, 512, device, cfg.seed, 0)
    optimizer = build_optimizer(cfg.optimizer, model)
    for epoch in range(cfg.trainer.epochs):
        for images, labels, _ in train.epoch(epoch):
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def run(quick: bool) -> list[dict]:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for model, size, repeats in CASES:
            epochs, train_size = (2, 1024) if quick else (3, 4096)
            cfg = compose(model, size, epochs, train_size, device)
            best_divrun, best_loop = float("inf"), float("inf")
            for _ in range(2 if quick else repeats):
                best_loop = min(best_loop, time_hand_written(cfg, torch.device(device)))
                best_divrun = min(best_divrun, time_divrun(cfg))
            rows.append({"device": device, "model": model, "images/epoch": train_size, "epochs": epochs,
                         "hand-written s/epoch": best_loop / epochs, "divrun s/epoch": best_divrun / epochs,
                         "ratio": best_divrun / best_loop, "load": round(os.getloadavg()[0], 1)})
    return rows
