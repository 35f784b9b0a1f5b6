"""Cost of a distillation method per training step, as a ratio to `distill=none` in the same run.

Each method trains the same student (synthetic 16x16 images, `small_cnn`, batch 128) through
the run's `Step` (runner/step.py); the teacher of the offline methods is another `small_cnn` (a run folder written
here), the online methods train one like it. The methods take turns over several rounds and each keeps its
best round. `ratio` = the method's time per step over `none`'s: 1.0 is free; a frozen teacher adds a
forward pass (about a third of a step), a trained one a whole step.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

METHODS = ["none", "kd", "nd", "dhkd", "dml", "bdkd", "pskd", "saf", "mesa"]
COMMON = ["dataset=synthetic", "dataset.image_size=16", "model=small_cnn", "logger.progress=false",
          "logger.wandb.mode=disabled", "trainer.batch_size=128"]


def compose(*overrides: str):
    from runner.config import compose as compose_config

    return compose_config(*overrides)


def run_for(overrides: list[str]):
    from runner.build import build_run
    from runner.run_folder import resolved_config

    return build_run(resolved_config(compose(*COMMON, *overrides)))


def step_timer(run):
    """A function timing `steps` training steps on pre-drawn batches (after three warm-up steps)."""
    batches = list(run.train_loader.epoch(0))
    sync = torch.cuda.synchronize if run.runtime.device.type == "cuda" else (lambda: None)
    for step, (images, labels, indices) in enumerate(batches[:3]):
        run.step(images, labels, indices, step)

    def seconds_per_step(steps: int) -> float:
        sync()
        start = time.perf_counter()
        for step in range(steps):
            images, labels, indices = batches[step % len(batches)]
            run.step(images, labels, indices, step)
        sync()
        return (time.perf_counter() - start) / steps
    return seconds_per_step


def run(quick: bool) -> list[dict]:
    from runner.job import run_job

    rounds, steps = (3, 5) if quick else (5, 10)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher_dir = root / "teacher"
        run_job(compose(*COMMON, "trainer.max_steps=1"), teacher_dir)
        timers, devices = {}, {}
        for method in METHODS:
            overrides = [f"distill={method}", "trainer.epochs=10"]
            if method in ("kd", "nd", "dhkd"):
                overrides.append(f"distill.teacher={teacher_dir}")
            if method in ("dml", "bdkd"):
                overrides.append("distill.teacher_model=small_cnn")
            run = run_for(overrides)
            run.progress.epoch = 6  # past saf's and mesa's start epoch (5): their trajectory losses are active
            timers[method], devices[method] = step_timer(run), str(run.runtime.device)
        # rounds over all methods, best round per method: a change of machine load hits every method alike
        best = dict.fromkeys(timers, float("inf"))
        for _ in range(rounds):
            for method, timer in timers.items():
                best[method] = min(best[method], timer(steps))
    return [{"method": m, "ms_per_step": 1000 * best[m], "ratio": best[m] / best["none"], "device": devices[m]}
            for m in METHODS]
