"""A recipe (`recipes/<table>.yaml`) and its expansion into runs: one run folder per cell, grid point and seed.

A cell is a (row, column) pair named `row/column`; its overrides are the protocol's, the row's, the column's
and the cell's own, merged in that order (a later value of a key wins). A `grid` (on a row, column or cell)
turns a cell into several variants of which the table reports the best, as papers that print "the best of
a learning-rate sweep" do. A cell whose overrides name `${cell:other}` runs after `other`, in a later stage.

A grid point is selected on held-out training data, never on the test split: the runs of a grid cell hold
out `holdout` of the training set (the recipe's key, default 0.1: `dataset.holdout`) and the table reports
the point with the best first metric measured there (its holdout counterpart: final_val_acc1 ->
final_holdout_acc1, val/nll -> holdout/nll), with that point's test numbers. A first metric of the training
data itself (final_train_loss: an lr x batch grid picks the lr that trains best) selects on itself, with no
holdout.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

from runner.errors import ConfigError
from runner.tables import overrides as ov

NAME = re.compile(r"^[a-z0-9_]+$")
DEFAULT_HOLDOUT = 0.1  # the share of the training set a grid cell's runs hold out to select their point on
SOURCES = {"paper", "repository", "check"}  # how sure a printed number is
SCALES = ("full", "smoke")


@dataclass
class Metric:
    name: str
    label: str
    definition: str
    key: str                   # a summary.json key, or a metrics.jsonl key (it holds a "/")
    scale: float = 1.0         # shown value = offset + scale * raw value
    offset: float = 0.0
    higher_is_better: bool = True
    reduce: str = "last"       # metrics.jsonl keys: the last record's value, or the mean over records
    relative_to: str | None = None  # a column: the value becomes 100 * ours / that column's (same row)


@dataclass
class PaperValue:
    mean: float
    std: float | None
    source: str


@dataclass
class Cell:
    name: str
    row: str
    column: str
    label: str
    overrides: list[str]
    grid: dict[str, list]
    paper: dict[str, PaperValue]
    needs: list[str] = field(default_factory=list)

    def variants(self) -> list[tuple[str | None, list[str]]]:
        """(folder name, overrides) per grid point; one unnamed variant without a grid."""
        if not self.grid:
            return [(None, [])]
        keys = list(self.grid)
        points = itertools.product(*(self.grid[k] for k in keys))
        return [(",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, point)),
                 [f"{k}={v}" for k, v in zip(keys, point)]) for point in points]


@dataclass
class Run:
    cell: Cell
    variant: str | None
    seed: int
    overrides: list[str]
    run_dir: Path
    table_dir: Path
    stage: int
    group: str  # the wandb group of the table's runs


@dataclass
class Recipe:
    name: str
    path: Path
    title: str
    citation: str
    caption: str
    source: str
    seeds: int
    protocol: list[str]
    metrics: dict[str, Metric]
    cells: dict[str, Cell]
    smoke: dict
    notes: str = ""
    gpu_hours: float | None = None
    holdout: float | int = DEFAULT_HOLDOUT
    scaling: dict | None = None  # an lr x batch grid's fitted exponent per row (runner/tables/scaling.py)

    @property
    def primary(self) -> Metric:
        return next(iter(self.metrics.values()))

    @property
    def selection(self) -> Metric | None:
        """What a grid cell's point is chosen by: the primary metric on the holdout split, or the training
        objective itself when the primary metric is one (an lr x batch grid picks the lr that trains best)."""
        if is_training_metric(self.primary.key):
            return self.primary
        key = holdout_key(self.primary.key)
        return None if key is None else replace(self.primary, key=key)

    @property
    def has_grid(self) -> bool:
        return any(cell.grid for cell in self.cells.values())

    def table_dir(self, out_root: Path, scale: str) -> Path:
        return Path(out_root) / self.name / ("smoke" if scale == "smoke" else "")

    def stages(self) -> dict[str, int]:
        """Stage of each cell: 0 without dependencies, else one more than its latest dependency."""
        stage: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> int:
            if name in path:
                raise ConfigError(f"{self.path}: cells depend on each other in a loop: {' -> '.join(path + (name,))}")
            if name not in stage:
                stage[name] = 1 + max((visit(d, path + (name,)) for d in self.cells[name].needs), default=-1)
            return stage[name]

        for name in self.cells:
            visit(name, ())
        return stage

    def smoke_overrides(self, cell: str) -> list[str]:
        """The smoke budget: overrides for every cell, then the cell's own (`smoke.cells`)."""
        return list(self.smoke.get("overrides", [])) + list((self.smoke.get("cells") or {}).get(cell, []))

    def runs(self, out_root: Path, scale: str = "full", seeds: int | None = None, data_root: Path = Path("data"),
             extra: list[str] = ()) -> list[Run]:
        """Every run of the table in launch order, with its overrides filled in and its run folder."""
        if scale not in SCALES:
            raise ConfigError(f"scale={scale}: choose one of {', '.join(SCALES)}")
        table_dir = self.table_dir(out_root, scale).resolve()
        seeds = seeds or (self.smoke.get("seeds", 1) if scale == "smoke" else self.seeds)
        stages, runs = self.stages(), []
        for name in sorted(self.cells, key=lambda n: stages[n]):
            cell = self.cells[name]
            budget = self.smoke_overrides(name) if scale == "smoke" else []
            # select the point on held-out data (a training objective needs none)
            held = [f"dataset.holdout={self.holdout}"] if cell.grid and not is_training_metric(self.primary.key) else []
            for (variant, point), seed in itertools.product(cell.variants(), range(seeds)):
                merged = ov.merge(held, cell.overrides, point, budget, list(extra), [f"seed={seed}"])
                filled = [ov.fill(o, Path(data_root), lambda c, s=seed: table_dir / c / f"seed{s}") for o in merged]
                run_dir = table_dir / name / (variant or "") / f"seed{seed}"
                group = self.name + ("-smoke" if scale == "smoke" else "")
                runs.append(Run(cell, variant, seed, filled, run_dir, table_dir, stages[name], group))
        return runs


# ----------------------------------------------------------------------------------------------------------
# Loading and checking a recipe
# ----------------------------------------------------------------------------------------------------------

def recipes_dir() -> Path:
    return Path(str(resources.files("runner.recipes")))


def available() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def load(name_or_path: str | Path) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        path = recipes_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"no table {name_or_path!r}: choose one of {', '.join(available())} or give a recipe file")
    try:
        raw = yaml.safe_load(path.read_text())
        return parse(path, raw)
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        if isinstance(error, ConfigError):
            raise
        message = " ".join(str(error).split())
        raise ConfigError(f"{path}: malformed recipe ({type(error).__name__}: {message}); "
                          f"see README.md, section Tables (quote overrides holding [ ] or ${{...}})") from error


def parse(path: Path, raw: dict) -> Recipe:
    def fail(message: str):
        raise ConfigError(f"{path}: {message}")

    for key in ("title", "citation", "protocol", "rows", "columns", "metrics", "seeds", "smoke"):
        if key not in raw:
            fail(f"missing `{key}` (see README.md, section Tables)")
    rows, columns = raw["rows"], raw["columns"]
    for name in list(rows) + list(columns):
        if not NAME.match(str(name)):
            fail(f"row/column name {name!r}: use lower-case letters, digits and _")
    metrics = {name: Metric(name=name, **spec) for name, spec in raw["metrics"].items()}
    extras = raw.get("cells") or {}
    excluded = set(raw.get("exclude") or [])
    cells = {}
    for row, column in itertools.product(rows, columns):
        name = f"{row}/{column}"
        if name in excluded:
            continue
        r, c, own = rows[row] or {}, columns[column] or {}, extras.get(name) or {}
        overrides = ov.merge(raw["protocol"], r.get("overrides", []), c.get("overrides", []), own.get("overrides", []))
        grid = {**(r.get("grid") or {}), **(c.get("grid") or {}), **(own.get("grid") or {})}
        label = own.get("label") or f"{r.get('label', row)} / {c.get('label', column)}"
        needs = sorted({ref for o in overrides for ref in ov.cell_references(o)})
        tails = [key.rsplit(".", 1)[-1] for key in grid]
        if len(set(tails)) < len(tails):
            fail(f"cell {name}: grid keys {list(grid)} end alike; their run folders would collide")
        cells[name] = Cell(name, row, column, label, overrides, grid, {}, needs)
    pairs = {f"{r}/{c}" for r in rows for c in columns}
    for name in list(extras) + sorted(excluded):
        if name not in pairs:
            fail(f"cell {name!r} under cells/exclude is not a row/column pair of the table")
    for cell in cells.values():
        for need in cell.needs:
            if need not in cells:
                fail(f"cell {cell.name} uses ${{cell:{need}}}, which is not a cell of the table")
            if cells[need].grid:
                fail(f"cell {cell.name} uses ${{cell:{need}}}, which has a grid: name one run, not a sweep")
    for metric in metrics.values():
        if metric.relative_to and metric.relative_to not in columns:
            fail(f"metric {metric.name}: relative_to={metric.relative_to} is not a column")
    for name in (raw["smoke"] or {}).get("cells") or {}:
        if name not in cells:
            fail(f"smoke.cells names {name!r}, which is not a cell of the table")
    default_source = raw.get("paper_source", "paper")
    for name, entry in (raw.get("paper") or {}).items():
        if name not in cells:
            fail(f"paper numbers for {name!r}, which is not a cell of the table")
        entry = dict(entry)
        source = entry.pop("source", default_source)
        if source not in SOURCES:
            fail(f"paper source {source!r} for {name}: choose one of {', '.join(sorted(SOURCES))}")
        for metric, value in entry.items():
            if metric not in metrics:
                fail(f"paper number for {name}: {metric!r} is not one of the metrics ({', '.join(metrics)})")
            mean, std = (value["mean"], value.get("std")) if isinstance(value, dict) else (value, None)
            cells[name].paper[metric] = PaperValue(float(mean), None if std is None else float(std), source)
    recipe = Recipe(name=path.stem, path=path, title=raw["title"], citation=raw["citation"],
                    caption=raw.get("caption", ""), source=raw.get("source", ""), seeds=int(raw["seeds"]),
                    protocol=list(raw["protocol"]), metrics=metrics, cells=cells, smoke=raw["smoke"] or {},
                    notes=raw.get("notes", ""), gpu_hours=raw.get("gpu_hours"),
                    holdout=raw.get("holdout", DEFAULT_HOLDOUT), scaling=raw.get("scaling"))
    if recipe.scaling is not None and not {"x", "y"} <= set(recipe.scaling):
        fail("`scaling` needs `x` (the cells' key, e.g. trainer.batch_size) and `y` (the grid's, e.g. optimizer.lr)")
    recipe.stages()  # rejects dependency loops now, not halfway through a table
    if recipe.has_grid and recipe.selection is None:
        fail(f"the first metric ({recipe.primary.key}) has no holdout counterpart to select grid points on; "
             f"put a val metric (final_val_acc1, final_val_loss or val/...) or a training one (final_train_loss) "
             f"first")
    return recipe


def is_training_metric(key: str) -> bool:
    """A metric of the training data itself (final_train_loss, train/...): never the test split."""
    return key.startswith(("final_train_", "train/"))


def holdout_key(key: str) -> str | None:
    """A test-split metric key's counterpart on the holdout split (None when the runs record none)."""
    for test, held in (("final_val_acc1", "final_holdout_acc1"), ("final_val_loss", "final_holdout_loss")):
        if key == test:
            return held
    return "holdout/" + key.removeprefix("val/") if key.startswith("val/") else None
