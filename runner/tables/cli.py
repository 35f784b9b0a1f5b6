"""`divrun-table` (`python -m runner.tables`, `make reproduce-table`): list the tables, run one, render it.

    divrun-table                                   the tables, their cells and cost
    divrun-table adahessian_cifar10                run every cell (skipping finished ones), render the table
    divrun-table adahessian_cifar10 --scale smoke  the same cells on the recipe's tiny budget
    divrun-table adahessian_cifar10 --render       only render what the run folders hold
    divrun-table adahessian_cifar10 --dry-run      print each run's divrun command
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import yaml
from rich.table import Table

from runner import terminal
from runner.errors import ConfigError
from runner.tables import launch, recipe as recipes, render, results, scaling
from runner.tables import overrides as ov

console = terminal.console(stderr=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="divrun-table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", help="a table name (see the list) or a recipe file")
    parser.add_argument("--scale", default="full", choices=recipes.SCALES,
                        help="full: the paper's protocol; smoke: the recipe's tiny budget, never compared")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: the recipe's)")
    parser.add_argument("--data", default="data", help="the datasets folder, ${data:} in recipes (default: ./data)")
    parser.add_argument("--out", default="outputs/tables", help="where tables' run folders go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--devices", default=None, help="comma-separated GPU ids, one run per id at a time")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every run (repeatable), e.g. --set trainer.device=cuda:1")
    parser.add_argument("--render", action="store_true", help="render from the run folders; launch nothing")
    parser.add_argument("--dry-run", action="store_true", help="print each run's command; launch nothing")
    return parser.parse_args(argv)


def epochs_of(run: recipes.Run) -> float:
    values = [ov.split(o)[1] for o in run.overrides if ov.split(o)[0] == "trainer.epochs"]
    default = yaml.safe_load((ov.conf_dir() / "trainer" / "default.yaml").read_text())["epochs"]
    return float(values[-1]) if values else float(default)


def list_tables(out_root: Path) -> None:
    table = Table(title="Tables (make reproduce-table TABLE=<name> [SCALE=smoke] [SEEDS=n] [DATA=dir])")
    table.add_column("table", no_wrap=True)  # the name a user types: never broken across lines
    for column in ("title", "cells", "runs", "run-epochs", "GPU-hours (est.)", "smoke runs", "runnable here"):
        table.add_column(column, overflow="fold")
    for name in recipes.available():
        recipe = recipes.load(name)
        runs = recipe.runs(out_root)
        smoke = recipe.runs(out_root, "smoke")
        runnable = sum(1 for cell in recipe.cells.values() if not ov.missing_features(first_run(runs, cell).overrides))
        table.add_row(name, recipe.title, str(len(recipe.cells)), str(len(runs)), f"{sum(map(epochs_of, runs)):.0f}",
                      "-" if recipe.gpu_hours is None else f"{recipe.gpu_hours:g}", str(len(smoke)),
                      f"{runnable}/{len(recipe.cells)} cells")
    terminal.console().print(table)


def first_run(runs: list[recipes.Run], cell: recipes.Cell) -> recipes.Run:
    return next(run for run in runs if run.cell is cell)


def reproduce(args: argparse.Namespace) -> None:
    recipe = recipes.load(args.table)
    smoke = args.scale == "smoke"
    runs = recipe.runs(Path(args.out), args.scale, args.seeds, Path(args.data), args.extra)
    if args.dry_run:
        for run in runs:
            print(shlex.join(launch.command(run)))
        return
    table_dir = recipe.table_dir(Path(args.out), args.scale)
    table_dir.mkdir(parents=True, exist_ok=True)
    (table_dir / "recipe.yaml").write_text(recipe.path.read_text())
    console.print(f"divrun-table: {recipe.name} ({args.scale}): {len(recipe.cells)} cells, {len(runs)} runs "
                  f"in {table_dir}", highlight=False)
    if args.render:
        outcomes = launch.inspect(runs)
    else:
        devices = args.devices.split(",") if args.devices else None
        outcomes = launch.run_all(runs, args.jobs, devices, console)
    lines = results.collect(recipe, runs, outcomes, smoke)
    protocol = ov.merge(recipe.protocol, recipe.smoke.get("overrides", []) if smoke else [], args.extra)
    path = render.render(recipe, lines, table_dir, smoke, protocol)
    if recipe.scaling:
        section = scaling.markdown(scaling.fit(recipe, runs, outcomes, lines), recipe.scaling)
        path.write_text(path.read_text() + "\n" + section)
        console.print(section, highlight=False)
    console.print(f"divrun-table: wrote {path}, {path.with_suffix('.csv').name}, {path.with_suffix('.png').name}",
                  highlight=False)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        reproduce(args) if args.table else list_tables(Path(args.out))
    except ConfigError as error:
        print(f"divrun-table: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
