"""Comparisons of runs: groups of seeds, their statistics, differences against a baseline, tables and a figure.

The one mechanism behind the end of every sweep, `divrun-compare` and (through runner.stats) the tables.

    from runner import comparison, results
    runs = results.load("outputs/multirun/2026-12-01/10-00-00-abc")          # or any paths / globs
    c = comparison.compare(runs, by=["optimizer"], metrics=["final_val_acc1"], baseline="optimizer=sgd",
                           targets=["val/acc1=0.9"])
    c.stats        # one row per (group, metric): n, mean, std, ci_low, ci_high, median, min, max (finished runs)
    c.differences  # one row per (group, tested metric): baseline, kind (paired | welch), n, mean, ci_low,
                   #   ci_high, p_t, p_wilcoxon (paired only), p_holm, note ("too few seeds to test (n=2)")
    c.runs         # every run: folder, status, seed, group (its label), the grouping keys and every measure
    c.table()      # one row per group: the keys, runs, n, <metric>.<stat>, <metric>.diff... (comparison.csv)
    c.summary(g, m)  # a runner.stats.Summary; c.difference(g, m) the Difference row as a dict
    c.write(folder)  # comparison.md, .csv, .json, .png; returns their paths
    c.print()      # the tables on the console
    c.add_section(title, frame, note)   # an extra table in md/json/console (e.g. expected max over k trials)

`compare(runs, records=None, by=None, pool=(), metrics=None, baseline=None, targets=())`:
- `runs`: a frame from `results.load` (or paths); `records`: `results.load_records(runs)`, read when None.
- `by`: the grouping keys; None: the rule of `runner.comparison.grouping` (what varies except the seed, named
  as the user chose it). `pool`: keys allowed to differ inside a group. A key that differs outside the
  grouping raises ConfigError naming it and `--pool`. A batch-size key (`trainer.batch_size`) makes lr x batch
  grids: what else varies joins the grouping, and sections tabulate each lr x batch grid and fit lr* ~ B^k
  (runner.comparison.grid).
- `metrics`: the measures tested against the baseline, the first one the primary (figure, ordering); names
  from `runner.comparison.measures` (`final_val_acc1`, `best_val_loss`, `epochs_to_val_acc1>=0.9`, any numeric
  column of `runs`; `val/acc1` means `final_val_acc1`). None: `final_val_acc1` and each target's epochs.
  Every measure is summarised either way.
- `baseline`: "optimizer=sgd" or {"optimizer": "sgd"}: the group the others are compared with. Grouping keys it
  leaves out pair groups that share them (with by=optimizer,loss, `optimizer=sgd` compares each loss's
  optimizers with that loss's SGD). None: the first group; False: no comparison.
- `targets`: "val/acc1=0.9" or `measures.Target`s: steps, epochs and seconds to reach each.
- `sensitivity`: True or an lr key (`optimizer.lr`, a grouping key): the lr-sensitivity section, one row per
  sweep (the groups without the lr key); `runner.comparison.sensitivity`.

Statistics (runner.stats, scipy): per group and measure over the finished runs' values: n, mean, sample std,
95% t interval, median, min, max. Against the baseline: paired by seed when both groups hold the same seeds
(mean difference, its 95% interval and ttest_rel's p, Wilcoxon's signed-rank p), Welch's t-test otherwise;
Holm's correction across the groups compared with each metric's baseline; under 3 seeds: too few to test.
Failed, diverged, preempted and running runs are listed with their status and never enter a statistic.

Extending: a per-run measure is a column of `runs` (named in `metrics` to be tested); a group-level measure
(expected max over k trials; the sensitivity to the lr, runner.comparison.sensitivity) is a section built from
`c.runs` / `c.stats`.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from runner import results, stats
from runner.comparison import grid
from runner.comparison.grouping import SEED, Grouping, format_value, group_runs
from runner.comparison.measures import TARGET_KINDS, Target, column_name, measure_runs, suggest
from runner.comparison.sensitivity import add_lr_sensitivity
from runner.errors import ConfigError

PRIMARY = "final_val_acc1"
FIRST = ["final_val_acc1", "best_val_acc1", "final_val_acc5", "best_val_acc5", "final_val_loss", "best_val_loss",
         "final_val_nll", "best_val_nll", "final_val_ece", "best_val_ece"]
RUN_MEASURES = ["final_train_loss", "wall_time_s", "train_img_per_s"]
DIFFERENCE_FIELDS = ["kind", "n", "mean", "ci_low", "ci_high", "p_t", "p_wilcoxon", "p_holm", "note"]


@dataclass
class Section:
    title: str
    frame: pd.DataFrame
    note: str = ""


@dataclass
class Comparison:
    runs: pd.DataFrame
    grouping: Grouping
    measures: list[str]        # every measure summarised, in display order
    tested: list[str]          # compared with the baseline; tested[0] is the primary
    stats: pd.DataFrame
    differences: pd.DataFrame
    baseline: dict | None
    targets: tuple[Target, ...] = ()
    record_metrics: list[str] = field(default_factory=list)   # the record keys the runs hold (val/acc1, ...)
    records: pd.DataFrame | None = None
    sections: list[Section] = field(default_factory=list)

    @property
    def primary(self) -> str | None:
        return self.tested[0] if self.tested else None

    @property
    def groups(self) -> list[str]:
        return self.grouping.groups

    def summary(self, group: str, metric: str) -> stats.Summary | None:
        return self._summaries.get((group, metric))

    def difference(self, group: str, metric: str) -> dict | None:
        return self._differences.get((group, metric))

    def finished(self, group: str) -> int:
        return self._finished.get(group, 0)

    @cached_property
    def _summaries(self) -> dict:
        return {(row["group"], row["metric"]): stats.Summary(
                    int(row["n"]), *(stats.finite_or_none(row[c]) for c in stats.SUMMARY_COLUMNS[1:]))
                for row in self.stats.to_dict("records")}

    @cached_property
    def _differences(self) -> dict:
        return {(row["group"], row["metric"]): row for row in self.differences.to_dict("records")}

    def statuses(self, group: str) -> str:
        """"3 finished, 1 failed": the group's runs by status."""
        return self._statuses.get(group, "")

    @cached_property
    def _statuses(self) -> dict:
        return {label: describe_statuses(runs) for label, runs in self.runs.groupby("group", sort=False)["status"]}

    @cached_property
    def _finished(self) -> dict:
        return self.runs[self.runs["status"] == results.FINISHED].groupby("group", sort=False).size().to_dict()

    def add_section(self, title: str, frame: pd.DataFrame, note: str = "") -> None:
        self.sections.append(Section(title, frame, note))

    def group_table(self) -> pd.DataFrame:
        """One row per group: its label, key values, the runs by status, n (finished runs) and their seeds."""
        rows = []
        for label, runs in self.runs.groupby("group", sort=False):
            finished = runs[runs["status"] == results.FINISHED]
            seeds = sorted(s for s in finished[SEED].dropna()) if SEED in runs else []
            rows.append({"group": label, **{k: format_value(runs[k].iloc[0]) for k in self.grouping.keys},
                         "runs": self.statuses(label), "n": len(finished),
                         "seeds": ",".join(format_value(s) for s in seeds)})
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """comparison.csv: one row per group; per measure its statistics, per tested one its difference."""
        groups = self.group_table().set_index("group")
        wide = self.stats.pivot(index="group", columns="metric", values=stats.SUMMARY_COLUMNS)
        columns = {f"{metric}.{stat}": wide[(stat, metric)] if (stat, metric) in wide else None
                   for metric in self.measures for stat in stats.SUMMARY_COLUMNS}
        for metric in self.tested:
            rows = self.differences[self.differences["metric"] == metric].set_index("group")
            for name in ["baseline", *DIFFERENCE_FIELDS]:
                title = {"baseline": "baseline", "mean": "diff"}.get(name, f"diff_{name}")
                columns[f"{metric}.{title}"] = rows[name] if len(rows) else None
        extra = pd.DataFrame({k: v for k, v in columns.items() if v is not None}, index=groups.index)
        return pd.concat([groups, extra], axis=1).reindex(columns=[*groups.columns, *columns]).reset_index()

    def write(self, folder: Path) -> list[Path]:
        from runner.comparison import report

        return report.write(self, Path(folder))

    def print(self, console=None) -> None:
        from runner.comparison import report

        report.print_tables(self, console)


def describe_statuses(statuses: pd.Series) -> str:
    """"3 finished" / "2 finished, 1 failed"."""
    return ", ".join(f"{n} {status}" for status, n in Counter(statuses).items())


def compare(runs, records: pd.DataFrame | None = None, by: list[str] | None = None, pool=(),
            metrics: list[str] | None = None, baseline=None, targets=(), sensitivity: str | bool = False) -> Comparison:
    """The comparison of the runs; see the module docstring."""
    runs = runs if isinstance(runs, pd.DataFrame) else results.load(runs)
    records = results.load_records(runs) if records is None else records
    record_metrics = list(records["metric"].unique())  # in order of appearance
    targets = tuple(t if isinstance(t, Target) else Target.parse(t, record_metrics) for t in targets)
    measured = with_measures(runs, measure_runs(runs, records, targets))
    batch = grid.batch_key(by)
    keys, found = grid.grouping_keys(measured, list(by), pool) if batch else (by, [])
    grouping = group_runs(measured, list(keys) if keys is not None else None, list(pool))
    grouping.found = found
    measured = measured.assign(group=grouping.labels.to_numpy())
    measures = measure_order(measured, targets)
    tested = tested_metrics(measured, metrics, targets, measures)
    measures += [m for m in tested if m not in measures]
    finished = measured[measured["status"] == results.FINISHED]
    summaries = stats.describe_groups(finished, "group", measures)
    chosen, pairs = baseline_pairs(grouping, measured, baseline)
    c = Comparison(measured, grouping, measures, tested, summaries, differences(finished, pairs, tested),
                   chosen, targets, record_metrics, records)
    if sensitivity:
        add_lr_sensitivity(c, sensitivity)
    if batch:
        grid.add_sections(c, batch)
    return c


def with_measures(runs: pd.DataFrame, measures: pd.DataFrame) -> pd.DataFrame:
    """The runs with their measures; a summary.json value stands in where the records have none."""
    columns = {}
    for column in measures.columns:
        values = pd.Series(measures[column].to_numpy(), index=runs.index)
        if column in runs:
            values = values.combine_first(pd.to_numeric(runs[column], errors="coerce"))
        columns[column] = values
    # new columns in one concat, not one at a time: a frame of many config keys would fragment (pandas warns)
    added = pd.DataFrame({c: v for c, v in columns.items() if c not in runs}, index=runs.index)
    runs = pd.concat([runs, added], axis=1)
    for column in columns.keys() & set(runs.columns) - set(added.columns):
        runs[column] = columns[column]  # a summary value filled in where the records have none, in its place
    return runs


def measure_order(runs: pd.DataFrame, targets: tuple[Target, ...]) -> list[str]:
    evals = [c for c in runs.columns if c.startswith(("final_", "best_")) and not c.endswith("_epoch")
             and c not in RUN_MEASURES and pd.api.types.is_numeric_dtype(runs[c])]
    ordered = [c for c in FIRST if c in evals] + [c for c in evals if c not in FIRST]
    ordered += [c for c in RUN_MEASURES if c in runs and c not in ordered]
    return ordered + [t.column(kind) for t in targets for kind in TARGET_KINDS]


def tested_metrics(runs: pd.DataFrame, metrics, targets: tuple[Target, ...], measures: list[str]) -> list[str]:
    if metrics is None:
        primary = PRIMARY if PRIMARY in measures else next((m for m in measures if m.startswith("final_")), None)
        return [m for m in [primary] if m] + [t.column("epochs") for t in targets] or measures[:1]
    names = []
    for name in metrics:
        alias = f"final_{column_name(name)}"  # val/acc1 means final_val_acc1
        name = alias if name not in runs and alias in runs else name
        if name not in runs or pd.to_numeric(runs[name], errors="coerce").isna().all():
            raise ConfigError(f"--metric {name}: the runs have no such measure{suggest(name, measures)}")
        names.append(name)
    return names


def parse_selector(baseline) -> dict[str, str]:
    if isinstance(baseline, dict):
        return {k: format_value(v) if not isinstance(v, str) else v for k, v in baseline.items()}
    pieces = re.split(r",(?=[\w./+-]+=)", str(baseline))
    if not all("=" in p for p in pieces):
        raise ConfigError(f"--baseline {baseline}: write KEY=VALUE[,KEY=VALUE], e.g. --baseline optimizer=sgd")
    return dict(p.split("=", 1) for p in pieces)


def baseline_pairs(grouping: Grouping, runs: pd.DataFrame, baseline) -> tuple[dict | None, dict[str, str | None]]:
    """The baseline selector and, for every other group, its baseline group (None: no group to compare with)."""
    groups = grouping.groups
    if baseline is False or len(groups) < 2 or not grouping.keys:
        return None, {}
    first = runs.drop_duplicates("group").set_index("group")
    values = {g: {k: format_value(first.at[g, k]) for k in grouping.keys} for g in groups}
    chosen = values[groups[0]] if baseline is None else parse_selector(baseline)
    text = ",".join(f"{k}={v}" for k, v in chosen.items())
    outside = [k for k in chosen if k not in grouping.keys]
    if outside:
        raise ConfigError(f"--baseline {text}: {outside[0]} is not a grouping key ({', '.join(grouping.keys)}); "
                          f"group by it with --by {','.join(grouping.keys + outside[:1])}")
    matches = [g for g in groups if all(values[g][k] == v for k, v in chosen.items())]
    if not matches:
        raise ConfigError(f"--baseline {text} matches no group; choose one of: {'; '.join(groups)}")
    others = [k for k in grouping.keys if k not in chosen]
    pairs = {}
    for group in groups:
        if group not in matches:
            same = [m for m in matches if all(values[m][k] == values[group][k] for k in others)]
            pairs[group] = same[0] if same else None
    return chosen, pairs


def differences(finished: pd.DataFrame, pairs: dict[str, str | None], tested: list[str]) -> pd.DataFrame:
    """Each group against its baseline on every tested metric, Holm-corrected per metric."""
    by_group = {label: runs for label, runs in finished.groupby("group", sort=False)}
    rows = []
    for metric in tested:
        block = []
        for group, base in pairs.items():
            treatment, reference = by_group.get(group), by_group.get(base)
            if treatment is None or reference is None:
                note = "no baseline group with the same other keys" if base is None else "no finished runs"
                block.append({"group": group, "baseline": base, "note": note})
                continue
            difference = seed_difference(treatment, reference, metric)
            nothing = {"note": "nothing to compare: no values in one of the groups (not reached?)"}
            block.append({"group": group, "baseline": base, **(difference.as_dict() if difference else nothing)})
        for row, adjusted in zip(block, stats.holm([row.get("p_t") for row in block])):
            rows.append({"metric": metric, **row, "p_holm": adjusted})
    columns = ["group", "metric", "baseline", *DIFFERENCE_FIELDS]
    return pd.DataFrame(rows, columns=columns)


def seed_difference(treatment: pd.DataFrame, reference: pd.DataFrame, metric: str) -> stats.Difference | None:
    """Paired by seed when both groups hold the same seeds once each, Welch's test otherwise."""
    a, b = (pd.to_numeric(g[metric], errors="coerce") for g in (treatment, reference))
    if SEED in treatment:
        seeds_a, seeds_b = treatment[SEED], reference[SEED]
        if seeds_a.is_unique and seeds_b.is_unique and set(seeds_a) == set(seeds_b) and seeds_a.notna().all():
            order_a, order_b = seeds_a.argsort().to_numpy(), seeds_b.argsort().to_numpy()
            return stats.difference(a.to_numpy()[order_a], b.to_numpy()[order_b], paired=True)
    return stats.difference(a.to_numpy(), b.to_numpy(), paired=False)
