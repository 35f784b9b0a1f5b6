"""comparison.png: left, the primary measure's eval metric against epochs for each group, the mean over the
finished seeds with its 95% interval as a band; right, each seed's value of the primary measure per group (a
dot per seed) with the mean and its interval. Losses get a log scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from runner import stats
from runner.comparison.measures import column_name
from runner.curves import log_axis

COLORS = [f"C{i}" for i in range(10)]
MAX_WIDTH, MAX_LEGEND = 30.0, 12  # inches of dot plot; curves named in a legend (beyond: the dot plot's axis)


def log_scaled(metric: str) -> bool:
    return any(word in metric for word in ("loss", "nll"))


def curve_metric(measure: str | None, record_metrics: list[str]) -> str | None:
    """The record key behind a measure: final_val_acc1 -> val/acc1, epochs_to_val_acc1>=0.9 -> val/acc1."""
    if measure:
        stem = measure.split("_to_", 1)[1].split(">=")[0].split("<=")[0] if "_to_" in measure else \
            measure.removeprefix("final_").removeprefix("best_")
        found = [m for m in record_metrics if column_name(m) == stem]
        if found:
            return found[0]
    return "val/acc1" if "val/acc1" in record_metrics else None


def comparison_figure(c, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    wide = min(MAX_WIDTH, max(4.0, 0.3 * len(c.groups)))  # the dot plot grows with the groups
    fig = Figure(figsize=(7 + wide, 4.2 + (1.5 if len(c.groups) > 2 else 0)), dpi=110, layout="constrained")
    curves, dots = fig.subplots(1, 2, gridspec_kw={"width_ratios": [7, wide]})
    metric = curve_metric(c.primary, c.record_metrics)
    finished = c.runs[c.runs["status"] == "finished"]
    if metric and c.records is not None:
        draw_curves(curves, c, finished, metric)
    else:
        curves.text(0.5, 0.5, "no eval records", ha="center", va="center", transform=curves.transAxes)
    if c.primary:
        draw_dots(dots, c, finished, c.primary)
    fig.suptitle(f"{len(c.runs)} runs, grouped by {', '.join(c.grouping.keys) or 'nothing'}", fontsize=9)
    fig.savefig(path)


def draw_curves(ax, c, finished: pd.DataFrame, metric: str) -> None:
    rows = c.records[(c.records["metric"] == metric) & c.records["folder"].isin(finished["folder"])]
    rows = rows.assign(group=rows["folder"].map(finished.set_index("folder")["group"]),
                       epoch=rows["epoch"].astype(float).round(6))
    rows = rows.assign(point=list(zip(rows["group"], rows["epoch"])))
    band = stats.describe_groups(rows, "point", ["value"])
    for i, group in enumerate(c.groups):
        mine = band[band["point"].map(lambda p: p[0] == group)]
        if mine.empty:
            continue
        epochs = mine["point"].map(lambda p: p[1]).to_numpy()
        order = np.argsort(epochs)
        color = COLORS[i % len(COLORS)]
        ax.plot(epochs[order], mine["mean"].to_numpy()[order], color=color, label=f"{group} (n={mine['n'].max()})")
        ax.fill_between(epochs[order], mine["ci_low"].to_numpy(float)[order], mine["ci_high"].to_numpy(float)[order],
                        color=color, alpha=0.2, linewidth=0)
    for target in c.targets:
        if target.metric == metric:
            ax.axhline(target.value, color="grey", linestyle="--", linewidth=0.8)
    if log_scaled(metric) and (rows["value"] > 0).all():
        log_axis(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean, 95% CI band)")
    ax.grid(alpha=0.3)
    if 0 < len(ax.get_legend_handles_labels()[0]) <= MAX_LEGEND:
        ax.legend(fontsize=7)


def draw_dots(ax, c, finished: pd.DataFrame, measure: str) -> None:
    spread = np.random.default_rng(0)  # fixed jitter: the same picture every time
    for i, group in enumerate(c.groups):
        values = pd.to_numeric(finished[finished["group"] == group][measure], errors="coerce").dropna()
        color = COLORS[i % len(COLORS)]
        ax.scatter(i - 0.08 + spread.uniform(-0.1, 0.1, len(values)), values, s=18, color=color, alpha=0.8)
        summary = c.summary(group, measure)
        if summary is not None:
            low, high = summary.ci_low, summary.ci_high
            errors = [[summary.mean - low], [high - summary.mean]] if low is not None else None
            ax.errorbar([i + 0.15], [summary.mean], yerr=errors, fmt="_", color="black", capsize=3, markersize=10)
    tilt = len(c.groups) > 2
    ax.set_xticks(range(len(c.groups)), c.groups, rotation=30 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=7)
    ax.set_xlim(-0.5, len(c.groups) - 0.5)
    if log_scaled(measure) and (pd.to_numeric(finished[measure], errors="coerce").dropna() > 0).all():
        log_axis(ax)
    ax.set_ylabel(f"{measure}: each seed, mean and 95% CI")
    ax.grid(axis="y", alpha=0.3)
