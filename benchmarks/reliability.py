"""What reliability costs per train step: the NaN guards (trainer.on_nonfinite) and a checkpoint save, as ratios
against the default step (on_nonfinite=stop, which adds no work beyond a few tiny kernels) in the same run.

`sync each step` is the design the guards avoid: reading the finite flag back with `.item()` every step (on a
GPU that stalls the CPU until the step is done, so it cannot queue the next one; on a CPU it costs ~nothing)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch


def make_trainer(run_dir: Path, *overrides: str):
    from runner.checkpoint import Checkpointer
    from runner.config import compose
    from runner.train import Trainer

    return Trainer.from_config(compose("trainer.batch_size=64", "logger.wandb.mode=disabled", *overrides),
                               Checkpointer(run_dir))


def clock(device: str) -> float:
    """Wall time on a GPU (after a synchronize); on the CPU this process's CPU time, single-threaded, so other
    work on a shared machine does not enter the ratios."""
    if device == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def seconds_per_step(trainer, steps: int, sync_each_step: bool = False) -> float:
    run = trainer.run
    batches = list(run.train_loader.epoch(0))
    device = run.runtime.device.type
    start = clock(device)
    for index in range(steps):
        images, labels, indices = batches[index % len(batches)]
        row = run.step(images, labels, indices, index % run.total_steps)
        if sync_each_step:
            bool(torch.isfinite(row[0]))
    return (clock(device) - start) / steps


def run(quick: bool) -> list[dict]:
    steps, rounds = (5, 2) if quick else (20, 5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    # the guards' cost is a fixed amount per parameter tensor: a small model shows it largest
    data = ["dataset=digits", "model=small_cnn"] if device == "cpu" else ["dataset=synthetic", "model=resnet20"]
    cases = {"stop (default)": ([], False), "sync each step": ([], True),
             "skip": (["trainer.on_nonfinite=skip"], False),
             "skip, fused optimizer": (["trainer.on_nonfinite=skip", "+optimizer.fused=true",
                                        "optimizer.foreach=null"], False)}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {name: make_trainer(Path(folder) / name.replace(" ", "_").replace(",", ""), *data,
                                       f"trainer.device={device}", *overrides)
                    for name, (overrides, _) in cases.items()}
        best = dict.fromkeys(cases, float("inf"))
        for _ in range(rounds):  # interleaved rounds, best of each: robust to a busy machine
            for name, (_, sync) in cases.items():
                best[name] = min(best[name], seconds_per_step(trainers[name], steps, sync))
        trainer = trainers["stop (default)"]
        saves = []
        for _ in range(rounds):  # wall time: the fsync waits on the disk, not the CPU
            start = time.perf_counter()
            trainer.checkpoint()
            saves.append(time.perf_counter() - start)
        best["one checkpoint save (fsync; wall time)"] = min(saves)
    baseline = best["stop (default)"]
    return [{"case": name, "ms": seconds * 1e3, "ratio to a default step": seconds / baseline,
             "device": device if device == "cuda" else "cpu (1 thread, CPU time)",
             "setup": " ".join(data) + " trainer.batch_size=64"} for name, seconds in best.items()]
