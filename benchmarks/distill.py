"""Cost of a distillation method per training step, as a ratio to `distill=none` in the same run.

Each method trains the same student (synthetic 16x16 images, `small_cnn`, batch 128) through
`Trainer.train_step`; the teacher of the offline methods is another `small_cnn` (a run folder written
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


def trainer_for(root: Path, name: str, overrides: list[str]):
    from runner.checkpoint import Checkpointer
    from runner.run_folder import save_config
    from runner.logger import RunLogger
    from runner.train import Trainer

    run_dir = root / name
    run_dir.mkdir(parents=True)
    cfg = save_config(compose(*COMMON, *overrides), run_dir)
    return Trainer(cfg, run_dir, RunLogger(cfg, run_dir, name, None, enabled=False), Checkpointer(run_dir))


def step_timer(trainer):
    """A function timing `steps` training steps on pre-drawn batches (after three warm-up steps)."""
    batches = list(trainer.train_loader.epoch(0))
    sync = torch.cuda.synchronize if trainer.rt.device.type == "cuda" else (lambda: None)
    for images, labels, indices in batches[:3]:
        trainer.train_step(images, labels, indices)

    def seconds_per_step(steps: int) -> float:
        sync()
        start = time.perf_counter()
        for step in range(steps):
            images, labels, indices = batches[step % len(batches)]
            trainer.train_step(images, labels, indices)
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
            trainer = trainer_for(root, method, overrides)
            trainer.epoch = 6  # past saf's and mesa's start epoch (5): their trajectory losses are active
            timers[method], devices[method] = step_timer(trainer), str(trainer.rt.device)
        # rounds over all methods, best round per method: a change of machine load hits every method alike
        best = dict.fromkeys(timers, float("inf"))
        for _ in range(rounds):
            for method, timer in timers.items():
                best[method] = min(best[method], timer(steps))
    return [{"method": m, "ms_per_step": 1000 * best[m], "ratio": best[m] / best["none"], "device": devices[m]}
            for m in METHODS]
