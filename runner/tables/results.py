"""From run folders to table lines: each cell's metrics over seeds (runner.stats: mean, sample std, 95% t
interval), next to the paper's number.

Verdict: "reproduced" when the paper's mean lies in our 95% confidence interval widened by the paper's
reported std, else the gap (ours - paper) with its interval. One seed has no interval: the verdict says so.
A smoke run is never compared. A grid cell reports the point selected on the holdout split (recipe.py). A metric
the runs do not record is "not measured"; a cell without finished
runs shows why (failed, diverged, unavailable in this checkout, blocked, not run).
"""
from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from runner import stats
from runner.run_folder import read_metrics, read_summary
from runner.stats import Summary
from runner.tables.launch import Outcome
from runner.tables.recipe import Cell, Metric, PaperValue, Recipe, Run

PROBLEMS = {"failed", "diverged", "unavailable", "blocked"}


@dataclass
class Line:
    """One cell x metric line of the rendered table."""
    cell: Cell
    metric: Metric
    paper: PaperValue | None
    ours: Summary | None
    runs: str            # "3 finished", "2 finished, 1 failed: <error>"
    variant: str | None  # the grid point reported (the best one)
    verdict: str

    @property
    def diff(self) -> float | None:
        return None if self.paper is None or self.ours is None else self.ours.mean - self.paper.mean


def raw_value(run_dir: Path, metric: Metric) -> float | None:
    """The metric of one finished run: a summary.json key, or a metrics.jsonl key reduced over its records."""
    if "/" in metric.key:
        values = [r[metric.key] for r in read_metrics(run_dir) if r.get(metric.key) is not None]
        value = (values[-1] if metric.reduce == "last" else statistics.fmean(values)) if values else None
    else:
        value = (read_summary(run_dir) or {}).get(metric.key)
    if value is None or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return metric.offset + metric.scale * float(value)


def verdict(paper: PaperValue | None, ours: Summary | None, smoke: bool) -> str:
    if smoke:
        return "smoke run: not compared"
    if paper is None or ours is None:
        return ""
    diff = ours.mean - paper.mean
    if ours.ci_low is None:
        return f"gap {diff:+.2f} (one seed has no interval: run more seeds)"
    widened = paper.std or 0.0
    if ours.ci_low - widened <= paper.mean <= ours.ci_high + widened:
        return "reproduced"
    return f"gap {diff:+.2f} (95% CI {ours.ci_low - paper.mean:+.2f} to {ours.ci_high - paper.mean:+.2f})"


def describe(outcomes: list[Outcome]) -> str:
    """The runs' statuses counted, with the first problem's reason: "2 finished, 1 failed: ValueError: ..."."""
    text = ", ".join(f"{n} {status}" for status, n in Counter(o.status for o in outcomes).items())
    problem = next((o.detail for o in outcomes if o.status in PROBLEMS and o.detail), None)
    return f"{text}: {problem}" if problem else text


def collect(recipe: Recipe, runs: list[Run], outcomes: dict[Path, Outcome], smoke: bool) -> list[Line]:
    by_cell: dict[str, dict[str | None, list[Run]]] = {}
    for run in runs:
        by_cell.setdefault(run.cell.name, {}).setdefault(run.variant, []).append(run)
    values = {name: {variant: {m: [v for r in vruns if outcomes[r.run_dir].status == "finished"
                                   and (v := raw_value(r.run_dir, metric)) is not None]
                               for m, metric in recipe.metrics.items()}
                     for variant, vruns in variants.items()}
              for name, variants in by_cell.items()}
    best = {name: selected_variant(recipe, by_cell[name], outcomes) for name in values}
    lines = []
    for name, cell in recipe.cells.items():
        cell_outcomes = [outcomes[r.run_dir] for vruns in by_cell[name].values() for r in vruns]
        for m, metric in recipe.metrics.items():
            ours = stats.describe(values[name][best[name]][m])
            if ours and metric.relative_to:
                ours = relative(ours, values.get(f"{cell.row}/{metric.relative_to}"), best, cell.row, metric)
            paper = cell.paper.get(m)
            text = verdict(paper, ours, smoke)
            if ours is None and not smoke and any(o.status == "finished" for o in cell_outcomes):
                text = "not measured"
            lines.append(Line(cell, metric, paper, ours, describe(cell_outcomes), best[name], text))
    return lines


def selected_variant(recipe: Recipe, variants: dict[str | None, list[Run]], outcomes: dict[Path, Outcome]) -> str | None:
    """A grid cell's reported point: the best primary metric on the holdout split (never the test split)."""
    if len(variants) == 1:
        return next(iter(variants))
    held = {variant: {recipe.primary.name: [v for r in runs if outcomes[r.run_dir].status == "finished"
                                            and (v := raw_value(r.run_dir, recipe.selection)) is not None]}
            for variant, runs in variants.items()}
    return best_variant(held, recipe.primary)


def best_variant(variants: dict[str | None, dict[str, list[float]]], primary: Metric) -> str | None:
    """The grid point with the best mean primary metric (the first variant when none has a value)."""
    scored = [(stats.describe(v[primary.name]).mean, variant) for variant, v in variants.items() if v[primary.name]]
    if not scored:
        return next(iter(variants))
    pick = max if primary.higher_is_better else min
    return pick(scored, key=lambda item: item[0])[1]


def relative(ours: Summary, reference: dict | None, best: dict, row: str, metric: Metric) -> Summary | None:
    """100 * ours / the reference column's mean in the same row (e.g. images/s relative to SGD)."""
    ref_values = reference[best[f"{row}/{metric.relative_to}"]][metric.name] if reference else []
    if not ref_values:
        return None
    ref = stats.describe(ref_values).mean
    return Summary.from_moments(100 * ours.mean / ref, None if ours.std is None else 100 * ours.std / ref, ours.n)
