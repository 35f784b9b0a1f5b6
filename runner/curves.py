"""curves.png, written into every run folder when the run ends: train loss, val accuracy, val loss and the lr
against steps, from its metrics.jsonl (losses on a log scale)."""
from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

from runner import run_folder
from runner.results import read_records

RUN_PANELS = [("train/loss", True), ("val/acc1", False), ("val/loss", True), ("train/lr", False)]  # (key, log y)


def log_axis(ax) -> None:
    """A log y axis labelled in plain numbers (2.3, 6e-01), also over less than a decade."""
    from matplotlib.ticker import LogFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(minor_thresholds=(2, 0.5)))


def write_run_curves(run_dir: Path) -> Path | None:
    """curves.png in a run folder from its metrics.jsonl (None without records). Never raises: a picture that
    cannot be drawn costs a warning, not the run."""
    try:
        return run_curves(Path(run_dir))
    except Exception as error:  # noqa: BLE001 - the run's results are on disk already
        warnings.warn(f"curves.png not written: {type(error).__name__}: {error}")
        return None


def run_curves(run_dir: Path) -> Path | None:
    from matplotlib.figure import Figure  # the Agg canvas without pyplot's global state, as lr_schedule.png

    records = read_records(run_dir / run_folder.METRICS)
    if not records:
        return None
    fig = Figure(figsize=(9, 6), dpi=100)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=0.88, hspace=0.4, wspace=0.25)  # no layout pass
    for index, (metric, log) in enumerate(RUN_PANELS, 1):
        ax = fig.add_subplot(2, 2, index)
        points = [(r["step"], r[metric]) for r in records if r.get(metric) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        if log and points and min(p[1] for p in points) > 0:
            log_axis(ax)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(textwrap.fill(run_dir.name, 140), fontsize=7)
    path = run_dir / run_folder.CURVES
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return path
