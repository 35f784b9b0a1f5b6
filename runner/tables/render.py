"""Writing a table: table.md (the paper's layout and every cell x metric line), table.csv, table.png
(paper vs ours per cell) and a rich table on the console."""
from __future__ import annotations

import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runner import terminal
from runner.tables.recipe import Recipe, is_training_metric
from runner.tables.results import Line

SOURCE_NOTE = {"paper": "printed in the paper", "repository": "from the official repository's results",
               "check": "to be checked against the paper"}
SMOKE_BANNER = ("**SMOKE RUN**: the same cells on a tiny budget, to check that every cell runs. "
                "The numbers mean nothing and are not compared with the paper.")


def fmt(value: float | None, std: float | None = None, sign: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{sign}.2f}" + (f" +- {std:.2f}" if std is not None else "")


def selection_note(recipe: Recipe) -> str:
    if is_training_metric(recipe.selection.key):
        return (f"Grid cells: the point in [brackets] has the best {recipe.primary.label} (`{recipe.selection.key}`, "
                f"the training objective), never a test-split number; its other numbers are that point's.")
    return (f"Grid cells: the point in [brackets] has the best {recipe.primary.label} on the holdout split "
            f"(`{recipe.selection.key}`: dataset.holdout={recipe.holdout} of the training set, stratified, fixed by "
            f"the dataset's split seed), never on the test split; its numbers are that point's test values.")


def paper_text(line: Line) -> str:
    return fmt(line.paper.mean, line.paper.std) + ("" if line.paper.source == "paper" else f" ({line.paper.source})") \
        if line.paper else "-"


def ours_text(line: Line) -> str:
    return f"{fmt(line.ours.mean, line.ours.std)} (n={line.ours.n})" if line.ours else "-"


def columns(smoke: bool) -> list[str]:
    return ["cell", "metric", "ours", "runs"] if smoke else ["cell", "metric", "paper", "ours", "diff", "verdict", "runs"]


def cells_of(line: Line, smoke: bool) -> list[str]:
    label = line.cell.label + (f" [{line.variant}]" if line.variant else "")
    if smoke:
        return [label, line.metric.label, ours_text(line), line.runs]
    return [label, line.metric.label, paper_text(line), ours_text(line), fmt(line.diff, sign="+"), line.verdict, line.runs]


def markdown(recipe: Recipe, lines: list[Line], smoke: bool, protocol: list[str]) -> str:
    out = [f"# {recipe.title}", "", f"{recipe.citation}" + (f" ({recipe.source})" if recipe.source else ""), ""]
    if recipe.caption:
        out += [recipe.caption.strip(), ""]
    if smoke:
        out += [SMOKE_BANNER, ""]
    out += ["Protocol (divrun overrides shared by every cell):", "", "    " + " ".join(protocol), ""]
    out += pivot(recipe, lines, smoke)
    out += ["## Every cell", "", "| " + " | ".join(columns(smoke)) + " |", "|" + "---|" * len(columns(smoke))]
    out += ["| " + " | ".join(c.replace("|", "/") for c in cells_of(line, smoke)) + " |" for line in lines]
    out += ["", "## Metrics", ""]
    out += [f"- **{m.label}** (`{m.key}`): {m.definition}" for m in recipe.metrics.values()]
    if recipe.has_grid:
        out += ["", selection_note(recipe)]
    if not smoke:
        sources = sorted({line.paper.source for line in lines if line.paper})
        out += ["", "Paper numbers: " + "; ".join(f"{s}: {SOURCE_NOTE[s]}" for s in sources) + "." if sources else "",
                "Verdict: *reproduced* when the paper's mean lies in our 95% confidence interval (Student's t "
                "over the seeds) widened by the paper's std; otherwise the gap (ours - paper) with its interval."]
    if recipe.notes:
        out += ["", "## Notes", "", recipe.notes.strip()]
    return "\n".join(out) + "\n"


def pivot(recipe: Recipe, lines: list[Line], smoke: bool) -> list[str]:
    """The primary metric in the paper's rows x columns layout: "ours / paper" per cell."""
    primary = [line for line in lines if line.metric is recipe.primary]
    rows = list(dict.fromkeys(line.cell.row for line in primary))
    cols = list(dict.fromkeys(line.cell.column for line in primary))
    at = {(line.cell.row, line.cell.column): line for line in primary}
    text = "ours" if smoke else "ours / paper"
    out = [f"## {recipe.primary.label}: {text}", "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in rows:
        entries = []
        for col in cols:
            line = at.get((row, col))
            if line is None:
                entries.append("")
            elif smoke:
                entries.append(fmt(line.ours.mean) if line.ours else "-")
            else:
                entries.append(f"{fmt(line.ours.mean) if line.ours else '-'} / {fmt(line.paper.mean) if line.paper else '-'}")
        out.append(f"| {row} | " + " | ".join(entries) + " |")
    return out + [""]


def write_csv(path: Path, recipe: Recipe, lines: list[Line], smoke: bool) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["table", "scale", "cell", "row", "column", "metric", "paper_mean", "paper_std",
                         "paper_source", "ours_mean", "ours_std", "ours_ci_low", "ours_ci_high", "n", "diff", "verdict",
                         "variant", "selected_by", "runs"])
        for line in lines:
            paper, ours = (line.paper, line.ours) if not smoke else (None, line.ours)
            writer.writerow([recipe.name, "smoke" if smoke else "full", line.cell.name, line.cell.row, line.cell.column,
                             line.metric.name, paper and paper.mean, paper and paper.std, paper and paper.source,
                             ours and ours.mean, ours and ours.std, ours and ours.ci_low, ours and ours.ci_high,
                             ours.n if ours else 0,
                             None if smoke else line.diff, line.verdict, line.variant or "",
                             f"holdout {recipe.selection.key}" if line.cell.grid else "", line.runs])


def plot(path: Path, recipe: Recipe, lines: list[Line], smoke: bool) -> None:
    """Paper vs ours per cell, one panel per measured metric, error bars at one std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in recipe.metrics.values() if any(l.ours or l.paper for l in lines if l.metric is m)]
    metrics = metrics or [recipe.primary]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 0.5 * len(recipe.cells) + 2), 3.2 * len(metrics)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        mine = [line for line in lines if line.metric is metric]
        series = [("ours", [l.ours for l in mine])] + ([] if smoke else [("paper", [l.paper for l in mine])])
        for i, (label, values) in enumerate(series):
            points = [(k + 0.15 * (i - (len(series) - 1) / 2), v) for k, v in enumerate(values) if v]
            if points:
                ax.errorbar([x for x, _ in points], [v.mean for _, v in points],
                            yerr=[v.std or 0 for _, v in points], fmt="o", capsize=3, label=label)
        ax.set_xticks(range(len(mine)), [l.cell.name for l in mine], rotation=60, ha="right", fontsize=7)
        ax.set_xlim(-0.5, len(mine) - 0.5)
        ax.set_ylabel(metric.label)
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(recipe.title + (" (SMOKE: not comparable)" if smoke else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def console_table(recipe: Recipe, lines: list[Line], smoke: bool) -> Table:
    table = Table(title=recipe.title + (" [SMOKE: not compared with the paper]" if smoke else ""),
                  caption=selection_note(recipe) if recipe.has_grid else None)
    for column in columns(smoke):
        table.add_column(column, overflow="fold")
    for line in lines:
        style = "green" if line.verdict == "reproduced" else ("red" if line.verdict.startswith("gap") else None)
        table.add_row(*cells_of(line, smoke), style=style)
    return table


def render(recipe: Recipe, lines: list[Line], table_dir: Path, smoke: bool, protocol: list[str],
           console: Console | None = None) -> Path:
    """Write table.md, table.csv and table.png into table_dir; print the rich table; return table.md."""
    table_dir.mkdir(parents=True, exist_ok=True)
    (table_dir / "table.md").write_text(markdown(recipe, lines, smoke, protocol))
    write_csv(table_dir / "table.csv", recipe, lines, smoke)
    plot(table_dir / "table.png", recipe, lines, smoke)
    (console or terminal.console()).print(console_table(recipe, lines, smoke))
    return table_dir / "table.md"
