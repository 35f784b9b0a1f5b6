"""A comparison as files and console tables: comparison.md (for people), .csv (one row per group), .json (every
number, every run) and .png (the figure), written together into one folder.

Folders inside the output folder are written relative to it, so a sweep folder can be moved or committed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
from rich.table import Table

from runner import terminal
from runner.comparison import Comparison
from runner.comparison.grouping import format_value
from runner.comparison.measures import higher_is_better

FILES = ("comparison.md", "comparison.csv", "comparison.json", "comparison.png")
SIDE_MEASURES = ("best_val_acc1", "final_val_loss", "final_train_loss", "wall_time_s", "train_img_per_s")
METHOD = ("n counts finished runs; the interval is the 95% Student-t interval of the mean. Differences are "
          "group - baseline: paired by seed (mean difference, ttest_rel and Wilcoxon signed-rank) where both "
          "groups hold the same seeds, Welch's t-test otherwise; p (Holm) is corrected across the groups "
          "compared. Fewer than 3 seeds are too few to test.")


def number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "-"
    value = float(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1e4 else f"{value:,.0f}"


def p_value(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.3g}"


def interval(low, high) -> str:
    return "-" if low is None or pd.isna(low) else f"[{number(low)}, {number(high)}]"


def metric_label(metric: str) -> str:
    """What a measure is, in words: best-epoch numbers are labelled so."""
    if metric.startswith("best_"):
        return f"{metric} (best epoch)"
    if metric.startswith("final_"):
        return f"{metric} (last epoch)" if "train" not in metric else f"{metric} (last record)"
    return metric


def mean_std(summary) -> str:
    if summary is None:
        return "-"
    return number(summary.mean) + (f" ± {number(summary.std)}" if summary.std is not None else "")


def target_text(c: Comparison, group: str, metric: str) -> str:
    """A time to target: "not reached" when no finished seed got there, else "k/n reached"."""
    summary, finished = c.summary(group, metric), c.finished(group)
    if summary is None:
        return "not reached" if finished else "-"
    return f"{mean_std(summary)} ({summary.n}/{finished} reached)"


def is_target(metric: str) -> bool:
    return "_to_" in metric and metric.split("_to_", 1)[0] in ("steps", "epochs", "seconds")


def value_text(c: Comparison, group: str, metric: str) -> str:
    return target_text(c, group, metric) if is_target(metric) else mean_std(c.summary(group, metric))


def difference_text(row: dict | None) -> tuple[str, str]:
    """("+0.0133 [0.0050, 0.0216] paired", "p 0.012 / 0.25 / 0.024") for a Difference row."""
    if row is None:
        return "baseline", ""
    if pd.isna(row.get("mean")):
        return row.get("note") or "-", ""
    sign = "+" if row["mean"] >= 0 else ""
    text = f"{sign}{number(row['mean'])} {interval(row['ci_low'], row['ci_high'])} {row['kind']}"
    if row.get("note"):
        return text, row["note"]
    return text, " / ".join(p_value(row.get(k)) for k in ("p_t", "p_wilcoxon", "p_holm"))


def headline(c: Comparison) -> str:
    return (f"{len(c.runs)} runs in {len(c.groups)} groups, grouped by {c.grouping.describe()}"
            + (f"; baseline {baseline_text(c)}" if c.baseline else ""))


def baseline_text(c: Comparison) -> str:
    return ",".join(f"{k}={v}" for k, v in c.baseline.items()) if c.baseline else ""


# ---- console ------------------------------------------------------------------------------------------------
def print_tables(c: Comparison, console=None) -> None:
    console = console or terminal.console()
    console.print(f"divrun: comparison of {headline(c)}", highlight=False)
    for metric in c.tested:
        table = Table(title=f"{metric_label(metric)}: mean ± std, 95% CI", title_justify="left")
        for column in ("group", "runs", "mean ± std", "95% CI", f"vs {baseline_text(c) or 'baseline'}",
                       "p (t / Wilcoxon / Holm)"):
            table.add_column(column)
        for group in c.groups:
            summary = c.summary(group, metric)
            diff, p = difference_text(c.difference(group, metric)) if c.baseline else ("", "")
            table.add_row(group, c.statuses(group), value_text(c, group, metric),
                          interval(summary.ci_low, summary.ci_high) if summary else "-", diff, p)
        console.print(table)
    side = [m for m in SIDE_MEASURES if m in c.measures and m not in c.tested]
    side += [m for m in c.measures if is_target(m) and m not in c.tested]
    if side:
        table = Table(title="other measures: mean ± std over finished seeds", title_justify="left")
        table.add_column("group")
        for metric in side:
            table.add_column(metric_label(metric))
        for group in c.groups:
            table.add_row(group, *(value_text(c, group, m) for m in side))
        console.print(table)
    for section in c.sections:
        console.print(section_table(section))


def section_table(section) -> Table:
    table = Table(title=section.title, title_justify="left", caption=section.note or None)
    for column in section.frame.columns:
        table.add_column(str(column))
    for row in section.frame.itertuples(index=False):
        table.add_row(*(number(v) if isinstance(v, float) else str(v) for v in row))
    return table


# ---- markdown -------------------------------------------------------------------------------------------------
def markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = lambda cell: str(cell).replace("|", "/")
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(map(clean, row)) + " |" for row in rows]


def markdown(c: Comparison, folder: Path) -> str:
    out = [f"# Comparison: {len(c.runs)} runs, {len(c.groups)} groups", "",
           f"Grouped by {c.grouping.describe()}." + (f" Baseline: {baseline_text(c)}." if c.baseline else ""),
           "", METHOD, ""]
    for metric in c.tested:
        out += [f"## {metric_label(metric)}", ""]
        header = ["group", "runs", "n", "mean ± std", "95% CI", "median", "min", "max"]
        if c.baseline:
            header += [f"vs {baseline_text(c)}", "p (t / Wilcoxon / Holm)"]
        rows = []
        for group in c.groups:
            s = c.summary(group, metric)
            row = [group, c.statuses(group), s.n if s else 0, value_text(c, group, metric),
                   interval(s.ci_low, s.ci_high) if s else "-", *(number(getattr(s, k)) if s else "-"
                                                                   for k in ("median", "min", "max"))]
            if c.baseline:
                row += list(difference_text(c.difference(group, metric)))
            rows.append(row)
        out += markdown_rows(header, rows) + [""]
    out += ["## Every measure", "", "Each cell: mean ± std (n) over the finished seeds.", ""]
    out += markdown_rows(["measure"] + c.groups,
                         [[metric_label(m)] + [measure_cell(c, g, m) for g in c.groups] for m in c.measures])
    for section in c.sections:
        out += ["", f"## {section.title}", ""] + ([section.note, ""] if section.note else [])
        out += markdown_rows([str(col) for col in section.frame.columns],
                             [[number(v) if isinstance(v, float) else str(v) for v in row]
                              for row in section.frame.itertuples(index=False)])
    out += ["", "## Runs", ""]
    columns = [col for col in ("group", "seed", "status", c.primary) if col and col in c.runs]
    shown = lambda col, value: number(value) if col == c.primary else format_value(value)
    rows = c.runs[columns + ["folder"]].to_dict("records")
    out += markdown_rows(columns + ["folder"],
                         [[shown(col, r[col]) for col in columns] + [relative(r["folder"], folder)] for r in rows])
    out += ["", "![comparison](comparison.png)", ""]
    return "\n".join(out)


def measure_cell(c: Comparison, group: str, metric: str) -> str:
    if is_target(metric):
        return target_text(c, group, metric)
    s = c.summary(group, metric)
    return f"{mean_std(s)} ({s.n})" if s else "-"


def relative(path: str, folder: Path) -> str:
    path = os.path.abspath(path)
    try:
        return os.path.relpath(path, folder) if Path(path).is_relative_to(folder.resolve()) else path
    except ValueError:
        return path


# ---- json and csv ---------------------------------------------------------------------------------------------
def plain(value):
    """JSON-safe: NaN and infinities as null, numpy scalars as Python ones, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_dict(c: Comparison, folder: Path) -> dict:
    groups = []
    for row in c.group_table().to_dict("records"):
        label = row["group"]
        groups.append({
            "label": label, "keys": {k: row[k] for k in c.grouping.keys}, "runs": row["runs"], "n": row["n"],
            "seeds": row["seeds"],
            "measures": {m: s.as_dict() for m in c.measures if (s := c.summary(label, m)) is not None},
            "differences": {m: {k: v for k, v in d.items() if k not in ("group", "metric")}
                            for m in c.tested if (d := c.difference(label, m)) is not None}})
    run_columns = ["folder", "status", "group", *(k for k in ("seed", "name", "error") if k in c.runs)]
    measures = [m for m in c.measures if m in c.runs]
    runs = [{**{k: (relative(r[k], folder) if k == "folder" else r[k]) for k in run_columns if pd.notna(r[k])},
             "measures": {m: r[m] for m in measures if pd.notna(r[m])}}
            for r in c.runs[run_columns + measures].to_dict("records")]
    return plain({"grouping": {"keys": c.grouping.keys, "explicit": c.grouping.explicit, "pooled": c.grouping.pooled,
                               "rule": c.grouping.describe()},
                  "baseline": c.baseline, "primary": c.primary, "tested": c.tested, "measures": c.measures,
                  "higher_is_better": {m: higher_is_better(m) for m in c.measures},
                  "targets": [{"metric": t.metric, "value": t.value} for t in c.targets], "method": METHOD,
                  "groups": groups, "runs": runs,
                  "sections": [{"title": s.title, "note": s.note, "rows": s.frame.to_dict("records")}
                               for s in c.sections]})


def write(c: Comparison, folder: Path) -> list[Path]:
    from runner.comparison.figure import comparison_figure

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in FILES]
    paths[0].write_text(markdown(c, folder))
    c.table().to_csv(paths[1], index=False)
    paths[2].write_text(json.dumps(to_dict(c, folder), indent=2, allow_nan=False))
    comparison_figure(c, paths[3])
    return paths
