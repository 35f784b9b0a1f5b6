"""The run folder: the one place that knows its file names and reads and writes them, and the statuses a run
ends with (each with the exit code `divrun` returns for it).

    config.yaml                the resolved config, paths made absolute: what every later command needs
    summary.json               status, results, provenance (written when the run starts and when it ends)
    metrics.jsonl              one JSON record per logging interval and per evaluation
    grad_norms.csv             step,l2,l1: the gradient norms of every update
    lr_schedule.csv, .png      the lr of every update and its plot
    curves.png                 train loss, val accuracy and loss, lr against steps (when the run ends)
    meta.json                  the run's name, group and wandb id
    reliability.png            the last evaluation's reliability diagram (eval.reliability), calibrated beside it
    curvature.png              hessian/* against 2/lr over the steps (trainer.curvature)
    sample_losses.csv          step, then one column per tracked training sample (trainer.curvature.track)
    checkpoints/               step_<step>.pt files and last.pt (their format: runner/checkpoint.py)

Everything here is plain Python and OmegaConf (no torch), so `divrun` reads folders quickly and other tools
(tables, comparisons, tuning) can depend on it alone.
"""
from __future__ import annotations

import enum
import json
import os
import uuid
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError

CONFIG, SUMMARY, METRICS, GRAD_NORMS, META = "config.yaml", "summary.json", "metrics.jsonl", "grad_norms.csv", "meta.json"
SCHEDULE_CSV, SCHEDULE_PNG = "lr_schedule.csv", "lr_schedule.png"
CURVES = "curves.png"  # drawn by runner/curves.py when the run ends
CHECKPOINTS, LAST_CHECKPOINT = "checkpoints", "last.pt"
GRAD_NORMS_HEADER = "step,l2,l1\n"
RELIABILITY_PNG, CURVATURE_PNG, SAMPLE_LOSSES = "reliability.png", "curvature.png", "sample_losses.csv"
# config keys that hold paths: stored absolute, so a folder works from anywhere (resume, teacher, source)
PATH_KEYS = {"root", "path", "source", "teacher", "checkpoint"}


class Status(str, enum.Enum):
    """A run's status in summary.json; `exit_code` is what `divrun` exits with when a run ends so."""
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"            # a bug (traceback), or bad input found only when the run started
    DIVERGED = "diverged"        # NaN/Inf with trainer.on_nonfinite=stop
    PREEMPTED = "preempted"      # SIGTERM/SIGUSR1: checkpoint saved, requeue it
    INTERRUPTED = "interrupted"  # Ctrl-C
    PRUNED = "pruned"            # stopped by divrun-tune's median pruner at an evaluation point (after SIGTERM)

    @property
    def exit_code(self) -> int | None:
        return _EXIT_CODES[self]

    def __str__(self) -> str:
        return self.value


# 75 is EX_TEMPFAIL (sysexits.h, "try again later": SLURM scripts requeue on it); 130 is 128 + SIGINT
_EXIT_CODES = {Status.RUNNING: None, Status.FINISHED: 0, Status.FAILED: 1, Status.DIVERGED: 3,
               Status.PREEMPTED: 75, Status.INTERRUPTED: 130, Status.PRUNED: 75}


def outcome(error: BaseException) -> tuple[Status, int]:
    """The status a run stopped by `error` records and the exit code `divrun` returns: an exception names its
    own (`status`, `exit_code` class attributes: Diverged, Preempted, ConfigError's 2), Ctrl-C is
    interrupted, anything else a failure (a bug)."""
    status = Status.INTERRUPTED if isinstance(error, KeyboardInterrupt) else getattr(error, "status", Status.FAILED)
    return status, getattr(error, "exit_code", status.exit_code)


# ---- config.yaml ---------------------------------------------------------------------------------------
def absolute_paths(node):
    """Paths in the config are relative to the launch directory; store them absolute so a run folder works
    from anywhere (resume, a teacher for distillation, a source for the refined schedule)."""
    if isinstance(node, dict):
        return {k: (os.path.abspath(v) if k in PATH_KEYS and isinstance(v, str) and _looks_local(k, v)
                    else absolute_paths(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [absolute_paths(v) for v in node]
    return node


def _looks_local(key: str, value: str) -> bool:
    return key == "root" or os.path.exists(value)


def resolved_config(cfg: DictConfig) -> DictConfig:
    """What config.yaml records: every interpolation resolved, paths absolute."""
    return OmegaConf.create(absolute_paths(OmegaConf.to_container(cfg, resolve=True)))


def save_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Write `cfg` resolved as config.yaml and return it. Atomic: the nodes of a multi-node run each write the
    same file, and workers read it."""
    resolved = resolved_config(cfg)
    tmp = Path(run_dir) / f".{CONFIG}.{uuid.uuid4().hex}"
    tmp.write_text(OmegaConf.to_yaml(resolved))
    os.replace(tmp, Path(run_dir) / CONFIG)
    return resolved


def load_config(run_dir: Path) -> DictConfig:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise ConfigError(f"{run_dir} is not a divrun run folder (no {CONFIG}); pass the folder a run printed")
    return OmegaConf.load(path)


# ---- summary.json and meta.json ----------------------------------------------------------------------
def write_summary(run_dir: Path, summary: dict) -> None:
    (Path(run_dir) / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))


def read_summary(run_dir: Path) -> dict | None:
    """summary.json, or None when the folder has none (or a half-written one)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_meta(run_dir: Path) -> dict:
    path = Path(run_dir) / META
    return json.loads(path.read_text()) if path.exists() else {}


def write_meta(run_dir: Path, **values) -> None:
    meta = read_meta(run_dir) | values
    (Path(run_dir) / META).write_text(json.dumps(meta, indent=2))


# ---- metrics.jsonl and grad_norms.csv ------------------------------------------------------------------
def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of metrics.jsonl, in order ([] without the file)."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def read_grad_norms(run_dir: Path):
    """grad_norms.csv as a numpy array of rows (step, l2, l1), at least 2-D."""
    import numpy as np

    return np.loadtxt(Path(run_dir) / GRAD_NORMS, delimiter=",", skiprows=1, ndmin=2)


def _truncate_after(path: Path, step: int, step_of: Callable[[str], int]) -> None:
    """Drop the lines a resumed run will write again (those after its checkpoint's step)."""
    if path.exists():
        lines = path.read_text().splitlines(keepends=True)
        header = lines[:1] if path.suffix == ".csv" else []
        body = [line for line in lines[len(header):] if line.strip() and step_of(line) <= step]
        path.write_text("".join(header + body))


class RecordFiles:
    """metrics.jsonl and grad_norms.csv opened for appending (line-buffered: a killed run loses no record).
    With `resume_step` the records after that step are dropped first: the resumed run writes them again."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        metrics, norms = Path(run_dir) / METRICS, Path(run_dir) / GRAD_NORMS
        if resume_step is not None:
            _truncate_after(metrics, resume_step, lambda line: json.loads(line)["step"])
            # row t is update t: kept when t < step
            _truncate_after(norms, resume_step, lambda line: int(line.split(",")[0]) + 1)
            _truncate_after(Path(run_dir) / SAMPLE_LOSSES, resume_step, lambda line: int(line.split(",")[0]))
        self.metrics = open(metrics, "a", buffering=1)
        new_norms = not norms.exists()
        self.norms = open(norms, "a", buffering=1)
        if new_norms:
            self.norms.write(GRAD_NORMS_HEADER)
        self.run_dir, self.sample_losses = Path(run_dir), None

    def write_record(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")

    def write_grad_norms(self, first_step: int, rows: list[tuple[float, float]]) -> None:
        self.norms.write("".join(f"{first_step + i},{l2:.6g},{l1:.6g}\n" for i, (l2, l1) in enumerate(rows)))

    def write_sample_losses(self, step: int, samples: list[int], losses: list[float]) -> None:
        """One row of sample_losses.csv: the step, then each tracked sample's loss (its header names the
        samples by their position in the training split)."""
        if self.sample_losses is None:
            path = self.run_dir / SAMPLE_LOSSES
            new = not path.exists()
            self.sample_losses = open(path, "a", buffering=1)
            if new:
                self.sample_losses.write("step," + ",".join(f"sample_{i}" for i in samples) + "\n")
        self.sample_losses.write(f"{step}," + ",".join(f"{loss:.6g}" for loss in losses) + "\n")

    def close(self) -> None:
        self.metrics.close()
        self.norms.close()
        if self.sample_losses is not None:
            self.sample_losses.close()


# ---- lr_schedule.csv and .png ----------------------------------------------------------------------------
def write_lr_schedule(run_dir: Path, factors, base_lr: float, steps_per_epoch: int, title: str,
                      positions=None, unit: str = "step") -> None:
    """Every update's factor and group-0 lr (lr_schedule.csv) and a plot of it (lr_schedule.png); a schedule
    indexed by samples seen (batch=adaptive) gives its `positions` with unit "samples" (then per epoch)."""
    import numpy as np

    factors = np.asarray(factors)
    positions = np.arange(len(factors)) if positions is None else np.asarray(positions)
    rows = "".join(f"{t},{f:.10g},{base_lr * f:.10g}\n" for t, f in zip(positions, factors))
    (Path(run_dir) / SCHEDULE_CSV).write_text(f"{unit},factor,lr\n" + rows)
    _plot_lr_schedule(Path(run_dir) / SCHEDULE_PNG, positions, base_lr * factors, steps_per_epoch, title, unit)


def _plot_lr_schedule(path: Path, positions, lrs, steps_per_epoch: int, title: str, unit: str) -> None:
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state: no display needed

    fig = Figure(figsize=(6, 3.4), dpi=110)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.78)  # fixed margins: tight_layout costs more
    ax = fig.add_subplot()
    ax.plot(positions, lrs, linewidth=1.2)
    ax.set(xlabel="optimizer step" if unit == "step" else f"{unit} seen", ylabel="lr (param group 0)",
           xlim=(0, max(1, positions[-1])), ylim=(0, 1.05 * max(lrs.max(), 1e-12)))
    span = f"{len(lrs)} steps" if unit == "step" else f"{positions[-1] + 1:.0f} {unit}"
    ax.set_title(f"{title}: {span}", y=1.16)  # placed above the epoch axis: no layout pass to find it
    ax.grid(alpha=0.3)
    epochs = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
    epochs.set_xlabel("epoch")
    fig.savefig(path, pil_kwargs={"compress_level": 1})  # zlib level 1: a few KB larger, several ms faster


# ---- the evaluation's and the curvature's figures -------------------------------------------------------
def write_reliability(run_dir: Path, panels: dict, title: str) -> None:
    """reliability.png from the last evaluation's bins (runner/calibration.py)."""
    from runner.calibration import reliability_diagram

    reliability_diagram(Path(run_dir) / RELIABILITY_PNG, panels, title)


def write_curvature(run_dir: Path) -> bool:
    """curvature.png from metrics.jsonl's hessian records (runner/curvature.py); False when it holds none."""
    from runner.curvature import plot_curvature

    return plot_curvature(read_metrics(run_dir), Path(run_dir) / CURVATURE_PNG)
