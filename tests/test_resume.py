"""A run killed at any moment and resumed ends bit-identical to one that never stopped (CPU, deterministic).

Each test starts `divrun` in a subprocess, kills it at a randomly drawn point (SIGKILL: no chance to clean up;
SIGTERM: the preemption path), resumes it and compares weights, optimizer state, every metric record and
every gradient norm with an uninterrupted run of the same config.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import divrun, read_summary
from runner.checkpoint import load, step_of
from runner.preemption import REQUEUE_EXIT_CODE, PreemptionWatch

STEPS_PER_EPOCH = 22  # 1437 digits training images // 64
RUN = ["trainer.epochs=4", "trainer.batch_size=64", "trainer.log_every=4", "trainer.deterministic=true",
       "trainer.device=cpu", "logger.progress=false", "model.width=16"]
TOTAL_STEPS = 4 * STEPS_PER_EPOCH
DRAW = random.Random()  # a random kill point per test; the value is in every failure message


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen([str(Path(sys.executable).with_name("divrun")), f"hydra.run.dir={run_dir}", *RUN, *overrides],
                            cwd=run_dir.parent, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "WANDB_MODE": "disabled"})


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"divrun exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def newest_checkpoint_step(run_dir: Path) -> int:
    return max((step_of(p) for p in (run_dir / "checkpoints").glob("step_*.pt")), default=-1)


def kill_after_checkpoint(process: subprocess.Popen, run_dir: Path, min_step: int) -> None:
    wait_until(lambda: newest_checkpoint_step(run_dir) >= min_step, process, f"a checkpoint at step >= {min_step}")
    time.sleep(DRAW.uniform(0, 0.05))
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert read_summary(run_dir)["status"] == "running"


def resumed_at(result: subprocess.CompletedProcess) -> int:
    return int(re.search(r"resuming[\s\S]*?at step (\d+)", result.stdout + result.stderr).group(1))


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "train/img_per_s"} for line in lines]


def assert_same_run(run_dir: Path, reference: Path, context: str, total_steps: int | None = TOTAL_STEPS) -> None:
    got, want = load(run_dir / "checkpoints" / "last.pt"), load(reference / "checkpoints" / "last.pt")
    assert got["step"] == want["step"] == (total_steps or want["step"]), context
    for name, tensor in want["model"].items():
        assert torch.equal(got["model"][name], tensor), f"{context}: weights differ in {name}"
    for name, tensor in want.get("ema", {}).get("model", {}).items():
        assert torch.equal(got["ema"]["model"][name], tensor), f"{context}: the EMA differs in {name}"
    assert got.get("batch") == want.get("batch"), f"{context}: the batch differs"
    for index, state in want["optimizer"]["state"].items():
        for key, value in state.items():
            same = torch.equal if torch.is_tensor(value) else (lambda a, b: a == b)
            assert same(got["optimizer"]["state"][index][key], value), f"{context}: optimizer state {index}.{key}"
    assert records(run_dir) == records(reference), f"{context}: metrics.jsonl differs"
    assert (run_dir / "grad_norms.csv").read_text() == (reference / "grad_norms.csv").read_text(), context
    summary = read_summary(run_dir)
    assert summary["status"] == "finished" and summary["steps"] == want["step"], context
    for key in ("final_val_acc1", "best_val_acc1", "final_train_loss", "final_val_loss"):
        assert summary[key] == read_summary(reference)[key], f"{context}: {key}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    divrun(f"hydra.run.dir={run_dir}", *RUN, cwd=run_dir.parent)
    return run_dir


def test_sigkill_then_resume_from_an_epoch_boundary_is_exact(reference, tmp_path):
    run_dir, kill_at = tmp_path / "run", DRAW.choice([1, 2]) * STEPS_PER_EPOCH
    process = start(run_dir, "trainer.checkpoint_every=1")
    kill_after_checkpoint(process, run_dir, kill_at)
    result = divrun(f"resume={run_dir}", cwd=tmp_path)
    step, context = resumed_at(result), f"killed after the checkpoint at step >= {kill_at}"
    assert step % STEPS_PER_EPOCH == 0 and 0 < step < TOTAL_STEPS, context
    assert_same_run(run_dir, reference, f"{context}, resumed at {step}")


def test_sigkill_then_resume_from_inside_an_epoch_is_exact(reference, tmp_path):
    run_dir, kill_at = tmp_path / "run", DRAW.randrange(5, 55, 5)
    process = start(run_dir, "trainer.checkpoint_every=null", "trainer.checkpoint_every_steps=5",
                    "trainer.keep_checkpoints=1")
    kill_after_checkpoint(process, run_dir, kill_at)
    result = divrun(f"resume={run_dir}", cwd=tmp_path)
    step, context = resumed_at(result), f"killed after the checkpoint at step >= {kill_at}"
    assert step % STEPS_PER_EPOCH != 0 and step < TOTAL_STEPS, context
    assert_same_run(run_dir, reference, f"{context}, resumed at {step}")


def test_sigterm_saves_a_checkpoint_exits_for_requeue_and_resume_auto_is_exact(reference, tmp_path):
    run_dir, records_before = tmp_path / "run", DRAW.randrange(1, 10)
    overrides = ["trainer.checkpoint_every=null"]  # the only checkpoint before the end is the one SIGTERM asks for
    process = start(run_dir, *overrides)
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= records_before, process,
               f"{records_before} metric records")
    process.send_signal(signal.SIGTERM)
    context = f"SIGTERM after {records_before} records"
    assert process.wait(timeout=300) == REQUEUE_EXIT_CODE, context
    summary = read_summary(run_dir)
    assert summary["status"] == "preempted" and "SIGTERM received" in summary["error"], context
    assert newest_checkpoint_step(run_dir) == summary["steps"] < TOTAL_STEPS, context
    # a SLURM requeue runs the same command again: the fixed run folder plus trainer.resume=auto continue it
    result = divrun(f"hydra.run.dir={run_dir}", *RUN, *overrides, "trainer.resume=auto", cwd=tmp_path)
    assert resumed_at(result) == summary["steps"], context
    assert_same_run(run_dir, reference, context)


# every batch-size and recipe feature on: accumulation, lr scaling, EMA, RandAugment, erasing, mixup and CutMix;
# and the adaptive batch (its growth, sample-indexed schedule and test steps), killed inside an epoch
FEATURES = {
    "recipe": (["trainer.batch_size=32", "trainer.accumulate=2", "optimizer.lr_scaling=linear",
                "optimizer.reference_batch=64", "trainer.ema.decay=0.99", "dataset.augment=randaugment",
                "dataset.random_erasing=0.25", "dataset.mixup=0.8", "dataset.cutmix=1.0"], 4 * (1437 // 64)),
    "adaptive": (["batch=adaptive", "batch.eta=0.5", "batch.max=512", "trainer.batch_size=32",
                  "trainer.ema.decay=0.99"], None),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_sigkill_then_resume_is_exact_with_the_batch_and_recipe_features_on(feature, tmp_path):
    overrides, total_steps = FEATURES[feature]
    overrides = [*overrides, "trainer.checkpoint_every=null", "trainer.checkpoint_every_steps=3", "trainer.keep_checkpoints=1"]
    reference_dir = tmp_path / "reference" / "run"
    reference_dir.parent.mkdir()
    divrun(f"hydra.run.dir={reference_dir}", *RUN, *overrides, cwd=reference_dir.parent)
    steps = load(reference_dir / "checkpoints" / "last.pt")["step"]
    run_dir, kill_at = tmp_path / "run", DRAW.randrange(3, steps - 3, 3)
    kill_after_checkpoint(start(run_dir, *overrides), run_dir, kill_at)
    result = divrun(f"resume={run_dir}", cwd=tmp_path)
    step, context = resumed_at(result), f"{feature}: killed after the checkpoint at step >= {kill_at}"
    assert 0 < step < steps, context
    assert_same_run(run_dir, reference_dir, f"{context}, resumed at {step}", total_steps)


@pytest.mark.parametrize("optimizer", ["schedulefree_adamw", "prodigy"])
def test_sigterm_and_resume_are_exact_for_optimizers_with_run_state(optimizer, tmp_path):
    """Schedule-free saves the averaged weights (eval mode) and trains on after train(); Prodigy carries its d
    estimate (recorded as optimizer/d): stopped mid-epoch and resumed, both end as an uninterrupted run."""
    overrides = [f"optimizer={optimizer}", "trainer.checkpoint_every=null"]
    reference = tmp_path / "reference" / "run"
    divrun(f"hydra.run.dir={reference}", *RUN, *overrides, cwd=tmp_path)
    run_dir = tmp_path / "run"
    process = start(run_dir, *overrides)
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, process, "3 metric records")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) == REQUEUE_EXIT_CODE
    divrun(f"hydra.run.dir={run_dir}", *RUN, *overrides, "trainer.resume=auto", cwd=tmp_path)
    assert_same_run(run_dir, reference, f"optimizer={optimizer}, SIGTERM after 3 records")
    if optimizer == "prodigy":
        train_records = [r for r in records(reference) if "train/loss" in r]
        estimates = [r.get("optimizer/d") for r in train_records]
        assert None not in estimates and estimates[-1] > estimates[0] > 1e-6


def test_preemption_watch_turns_signals_into_a_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        assert not watch.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)
        assert watch.requested and watch.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_sigkill_inside_an_epoch_and_resume_are_exact_with_sample_weighting_selection_and_sampling(tmp_path):
    """loss_rank weights (their warm-up read from the step), cooldown's draws and upweighting (from the epoch),
    hard selection's candidates: a run killed mid-epoch and resumed ends as the uninterrupted one."""
    overrides = ["weighting=loss_rank", "sampler=cooldown", "selection=hard", "selection.candidates=2",
                 "trainer.checkpoint_every=null", "trainer.checkpoint_every_steps=5", "trainer.keep_checkpoints=1"]
    reference = tmp_path / "reference" / "run"
    divrun(f"hydra.run.dir={reference}", *RUN, *overrides, cwd=tmp_path)
    run_dir, kill_at = tmp_path / "run", DRAW.randrange(25, 60, 5)
    kill_after_checkpoint(start(run_dir, *overrides), run_dir, kill_at)
    result = divrun(f"resume={run_dir}", cwd=tmp_path)
    assert_same_run(run_dir, reference, f"killed after the checkpoint at step >= {kill_at}, resumed at "
                                        f"{resumed_at(result)}")
