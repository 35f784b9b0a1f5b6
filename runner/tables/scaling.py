"""A recipe's `scaling` section: the exponent k of lr* proportional to B^k, fitted per row of an lr x batch grid.

Each cell of a row runs one batch size (the config key `x`, e.g. trainer.batch_size) over a grid of the key `y`
(e.g. optimizer.lr); the table's selection (its first metric: use the training loss, never the test set, to pick
an lr) gives each cell's best grid point y*. Per row, k is the least-squares slope of log y* on log x
(runner.stats.power_law: scipy.stats.linregress, with its standard error), next to the rule's exponent (`expected`: 1 for linear, 1/2
for square-root scaling). A best point on the edge of its grid only bounds y*, and is flagged.

    scaling:
      x: trainer.batch_size       # read from each run's config.yaml: the value the run used
      y: optimizer.lr
      expected: {sgd: 1.0, adam: 0.5}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from runner import stats
from runner.tables.launch import Outcome
from runner.tables.recipe import Recipe, Run
from runner.tables.results import Line


@dataclass
class RowFit:
    row: str
    label: str
    points: list[tuple[float, float, bool]] = field(default_factory=list)  # (x, best y, on the grid's edge)
    exponent: float | None = None
    stderr: float | None = None
    expected: float | None = None


def config_value(run_dir: Path, key: str) -> float | None:
    path = run_dir / "config.yaml"
    if not path.exists():
        return None
    value = OmegaConf.select(OmegaConf.create(yaml.safe_load(path.read_text())), key)
    return float(value) if isinstance(value, (int, float)) else None


def fit(recipe: Recipe, runs: list[Run], outcomes: dict[Path, Outcome], lines: list[Line]) -> list[RowFit]:
    spec = recipe.scaling or {}
    best = {line.cell.name: line.variant for line in lines if line.metric is recipe.primary}
    fits: dict[str, RowFit] = {}
    for cell in recipe.cells.values():
        row = fits.setdefault(cell.row, RowFit(cell.row, cell.label.split(" / ")[0],
                                               expected=(spec.get("expected") or {}).get(cell.row)))
        finished = [run for run in runs if run.cell is cell and outcomes[run.run_dir].status == "finished"]
        chosen = [run for run in finished if run.variant == best.get(cell.name)]
        if not chosen:
            continue
        x, y = config_value(chosen[0].run_dir, spec["x"]), config_value(chosen[0].run_dir, spec["y"])
        grid_values = sorted({v for run in finished if (v := config_value(run.run_dir, spec["y"])) is not None})
        if x is not None and y is not None and y > 0:
            row.points.append((x, y, len(grid_values) > 1 and y in (grid_values[0], grid_values[-1])))
    for row in fits.values():
        row.exponent, row.stderr = stats.power_law([x for x, _, _ in row.points], [y for _, y, _ in row.points])
    return list(fits.values())


def markdown(fits: list[RowFit], spec: dict) -> str:
    out = ["## Fitted scaling exponents", "",
           f"lr* ~ B^k: the least-squares slope of log {spec['y']} on log {spec['x']} over each row's best grid "
           f"points (* marks a best point on the edge of its grid: a bound, not an optimum).", "",
           "| row | k (fitted) | k (rule) | best points |", "|---|---|---|---|"]
    for row in fits:
        k = "-" if row.exponent is None else f"{row.exponent:.2f}" + (f" +- {row.stderr:.2f}" if row.stderr else "")
        points = ", ".join(f"{x:g}: {y:.3g}{'*' if edge else ''}" for x, y, edge in sorted(row.points)) or "-"
        out.append(f"| {row.label} | {k} | {'-' if row.expected is None else f'{row.expected:g}'} | {points} |")
    return "\n".join(out) + "\n"
