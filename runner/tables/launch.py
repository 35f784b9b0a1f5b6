"""Running a table's runs: each one a `divrun` subprocess writing into its own known run folder.

A run whose summary.json says finished (or diverged: a result, which another try would repeat) is skipped,
so re-running a table only trains what is missing; a failed or interrupted run starts again (continuing from
its last checkpoint). A run this checkout cannot compose, or whose `${cell:...}` dependency did not finish, is
recorded and skipped; nothing stops the table. Stages run in order; inside one, `jobs` runs go in parallel,
each pinned to one of `devices` (CUDA_VISIBLE_DEVICES) when given.
"""
from __future__ import annotations

import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from rich.console import Console

from runner.launch import command as divrun_command, last_error_line, parallel_slots, run as run_divrun
from runner.run_folder import Status, read_summary
from runner.tables import overrides as ov
from runner.tables.recipe import Run

DONE = {Status.FINISHED, Status.DIVERGED}
LOG_FILE = "table.log"  # the subprocess's stdout and stderr, inside its run folder


@dataclass
class Outcome:
    run: Run
    status: str       # finished, diverged, failed, running, not run, unavailable, blocked
    detail: str = ""  # why: the missing options, the blocking cell, the error


def read_status(run_dir: Path) -> tuple[str, str]:
    """(status, error) from a run folder's summary.json; ("not run", "") without one."""
    summary = read_summary(run_dir)
    if summary is None:
        log = run_dir / LOG_FILE
        return ("failed", last_error_line(log)) if log.exists() else ("not run", "")
    return summary.get("status", Status.FAILED), summary.get("error", "")


def inspect(runs: list[Run]) -> dict[Path, Outcome]:
    """Each run's outcome as the folders and this checkout stand: done, failed, unavailable, or not run."""
    outcomes = {}
    for run in runs:
        status, detail = read_status(run.run_dir)
        if status not in DONE:
            missing = ov.missing_features(run.overrides)
            if missing:
                status, detail = "unavailable", "missing " + ", ".join(missing)
        outcomes[run.run_dir] = Outcome(run, status, detail)
    return outcomes


def command(run: Run) -> list[str]:
    return divrun_command(run.overrides, run.run_dir)


def launch(run: Run, slot: dict[str, str]) -> Outcome:
    (run.run_dir / LOG_FILE).unlink(missing_ok=True)  # one attempt's output per log
    env = {"WANDB_RUN_GROUP": run.group, **os.environ}  # wandb groups a table's runs (unless a group is set)
    status, detail = run_divrun(run.overrides, run.run_dir, slot, LOG_FILE, env=env)
    return Outcome(run, status, detail)


def run_all(runs: list[Run], jobs: int = 1, devices: list[str] | None = None,
            console: Console | None = None) -> dict[Path, Outcome]:
    """Launch what is not done, stage by stage; returns every run's outcome by run folder."""
    console = console or Console(stderr=True)
    outcomes = inspect(runs)  # composes configs: done here, once, not in the worker threads
    slots: queue.Queue = queue.Queue()
    for slot in parallel_slots(jobs, devices):
        slots.put(slot)
    total, counter = len(runs), iter(range(1, len(runs) + 1))

    def one(run: Run) -> Outcome:
        outcome = outcomes[run.run_dir]
        if outcome.status in DONE:
            outcome.detail = "done before"
        elif outcome.status != "unavailable":
            outcome = blocked(run, outcomes)
            if outcome is None:
                device, started = slots.get(), time.time()
                try:
                    outcome = launch(run, device)
                finally:
                    slots.put(device)
                outcome.detail = outcome.detail or f"{time.time() - started:.0f} s"
        report(console, next(counter), total, outcome)
        return outcome

    with ThreadPoolExecutor(max_workers=slots.qsize()) as pool:
        for _, stage in groupby(runs, key=lambda r: r.stage):
            for outcome in pool.map(one, list(stage)):
                outcomes[outcome.run.run_dir] = outcome
    return outcomes


def blocked(run: Run, outcomes: dict[Path, Outcome]) -> Outcome | None:
    """A run whose `${cell:...}` dependency (same seed) did not finish cannot start."""
    for need in run.cell.needs:
        dependency = outcomes.get(run.table_dir / need / f"seed{run.seed}")
        status = dependency.status if dependency else "not run"
        if status != "finished":
            return Outcome(run, "blocked", f"needs {need} seed{run.seed}, which is {status}")
    return None


STYLE = {"finished": "green", "diverged": "yellow", "failed": "red", "unavailable": "magenta", "blocked": "magenta"}


def report(console: Console, index: int, total: int, outcome: Outcome) -> None:
    run = outcome.run
    name = run.cell.name + (f" [{run.variant}]" if run.variant else "") + f" seed{run.seed}"
    style = STYLE.get(outcome.status, "white")
    console.print(f"[{index:>{len(str(total))}}/{total}] {name}: [{style}]{outcome.status}[/{style}]"
                  + (f" ({outcome.detail})" if outcome.detail else ""), highlight=False)
