"""lr x batch-size grids: what `divrun-compare ... --by trainer.batch_size` adds to a comparison.

A batch-size key in `by` makes the batch the grid's column axis. The groups are then the batch with whatever
else the default grouping rule finds varying (the lr, the optimizer: `runner.comparison.grouping`), named after
the user's keys, so nothing is pooled over an lr. For every value of the other keys (optimizer=sgd, ...) the
comparison gains sections:
- `lr x batch: <measure>`: one row per lr, one column per batch size, each cell mean ± std (n) over the finished
  seeds, for the selection measure and for the primary one; `*` marks each column's selected lr.
- `lr* ~ B^k`: per row of other keys, the selected lr at each batch size, the fitted exponent k (the slope of
  log lr* on log B, runner.stats.power_law, with its standard error) and the rule's: 1 for SGD-like optimizers,
  1/2 for adaptive ones (Granziol, Zohren & Roberts 2022; each optimizer's declared `adaptive` capability).
The lr is selected on `final_train_loss` (the training objective, never the test split) where the runs have
it, else on the primary measure (said in the note). The lr axis is the lr the user gave
(`optimizer.reference_lr` under a scaling rule, else the lr key that varies); lr* and the fit use the lr each
run recorded as used (`optimizer.lr`, a wrapper's `optimizer.base_optimizer.lr`). A selected lr on the edge of
its column's grid only bounds the optimum and is marked `^`.
"""
from __future__ import annotations

import pandas as pd

from runner import results, stats
from runner.comparison.grouping import format_value, group_runs, label_of
from runner.comparison.measures import higher_is_better

BATCH_KEYS = ("trainer.batch_size",)
USED_LR_KEYS = ("optimizer.base_optimizer.lr", "optimizer.lr")  # a wrapper's base runs with its own lr
LR_KEYS = ("optimizer.reference_lr", *USED_LR_KEYS, "optimizer.base_overrides.lr")
SELECTION = "final_train_loss"
SELECTED, EDGE = " *", "^"


def batch_key(by: list[str] | None) -> str | None:
    """The batch-size key among the grouping keys the user gave, if any: the grid's column axis."""
    return next((key for key in by or [] if key in BATCH_KEYS), None)


def grouping_keys(runs: pd.DataFrame, by: list[str], pool) -> tuple[list[str], list[str]]:
    """(the grouping keys, the ones added to `by`): what else varies, found by the default rule, before `by`."""
    found = [k for k in group_runs(runs, None, list(pool)).keys if k not in by]
    return found + list(by), found


def lr_axis(runs: pd.DataFrame) -> str | None:
    """The lr key the runs vary (the given lr before a rule scales it), or the first one they have."""
    present = [k for k in LR_KEYS if k in runs and pd.to_numeric(runs[k], errors="coerce").notna().any()]
    varying = [k for k in present if pd.to_numeric(runs[k], errors="coerce").nunique() > 1]
    return (varying or present or [None])[0]


def used_lr(run: pd.Series) -> float | None:
    values = [stats.finite_or_none(pd.to_numeric(run.get(k), errors="coerce")) for k in USED_LR_KEYS]
    return next((v for v in values if v is not None), None)


def rule_exponent(run: pd.Series) -> float | None:
    """Granziol et al.'s exponent for the run's optimizer: 1/2 when it is adaptive, else 1; None if unknown."""
    from runner.optim.capabilities import capabilities

    target = next((run[k] for k in ("optimizer.base_optimizer._target_", "optimizer._target_")
                   if isinstance(run.get(k), str)), None)
    try:
        adaptive = None if target is None else capabilities(target).adaptive
    except (ImportError, AttributeError, ValueError):  # a target this checkout cannot import
        return None
    return None if adaptive is None else 0.5 if adaptive else 1.0


def add_sections(c, batch: str) -> None:
    """The grid sections of comparison `c` (see the module docstring)."""
    lr = lr_axis(c.runs)
    if lr is None:
        return
    selection = SELECTION if SELECTION in c.measures else c.primary
    shown = list(dict.fromkeys(m for m in (selection, c.primary) if m))
    others = [k for k in c.grouping.keys if k != batch and k not in LR_KEYS]
    firsts = c.runs[c.runs["status"] == results.FINISHED].drop_duplicates("group")
    fits = []
    for values, block in (firsts.groupby(others, sort=False, dropna=False) if others else [((), firsts)]):
        values = values if isinstance(values, tuple) else (values,)
        title = label_of(dict(zip(others, values)), others)
        chosen = selected(c, block, lr, batch, selection)
        for metric in shown:
            c.add_section(f"lr x batch: {metric} ({title})", grid_frame(c, block, lr, batch, metric, chosen),
                          f"rows {lr}, columns {batch}; mean ± std (n) over finished seeds;{SELECTED} the lr "
                          f"selected at each batch size ({'lowest' if not higher_is_better(selection) else 'highest'} "
                          f"mean {selection})")
        fits.append(fit_row(dict(zip(others, values)), block, lr, batch, chosen))
    where = ("the training objective, never the test split" if selection == SELECTION else
             f"an evaluation measure: the runs record no {SELECTION}")
    c.add_section("lr* ~ B^k", pd.DataFrame(fits).fillna("-"),
                  f"lr*: the used lr of the selected cell at each {batch}, selected on {selection} ({where}); "
                  f"k: the least-squares slope of log lr* on log B (± its standard error); rule: 1 for SGD-like, "
                  f"1/2 for adaptive optimizers (Granziol et al. 2022); {EDGE} a selected lr on its grid's edge "
                  f"(a bound, not an optimum: widen the grid there)")


def selected(c, block: pd.DataFrame, lr: str, batch: str, metric: str) -> dict:
    """{batch value: the selected run row (its group's first)}: the best mean `metric` in each column."""
    best = {}
    sign = 1.0 if higher_is_better(metric) else -1.0
    for _, run in block.iterrows():
        summary = c.summary(run["group"], metric)
        if summary is not None and (run[batch] not in best or sign * summary.mean > best[run[batch]][0]):
            best[run[batch]] = (sign * summary.mean, run)
    return {b: run for b, (_, run) in best.items()}


def grid_frame(c, block: pd.DataFrame, lr: str, batch: str, metric: str, chosen: dict) -> pd.DataFrame:
    from runner.comparison.report import mean_std

    cells = {(run[lr], run[batch]): run["group"] for _, run in block.iterrows()}
    batches = sorted(block[batch].unique())
    rows = []
    for lr_value in sorted(block[lr].unique()):
        row = {lr: format_value(lr_value)}
        for b in batches:
            group = cells.get((lr_value, b))
            summary = c.summary(group, metric) if group is not None else None
            mark = SELECTED if b in chosen and chosen[b]["group"] == group else ""
            row[f"{batch}={format_value(b)}"] = f"{mean_std(summary)} ({summary.n}){mark}" if summary else "-"
        rows.append(row)
    return pd.DataFrame(rows)


def fit_row(others: dict, block: pd.DataFrame, lr: str, batch: str, chosen: dict) -> dict:
    points = []  # (batch, used lr, on the edge of the column's grid)
    for b in sorted(chosen):
        run, column = chosen[b], block[block[batch] == b][lr]
        value = used_lr(run)
        if value is not None and value > 0:
            points.append((float(b), value, column.nunique() > 1 and run[lr] in (column.min(), column.max())))
    k, error = stats.power_law([x for x, _, _ in points], [y for _, y, _ in points])
    rule = rule_exponent(chosen[min(chosen)]) if chosen else None
    return {**{key: format_value(v) for key, v in others.items()},
            "k (fitted)": "-" if k is None else f"{k:.2f}" + (f" ± {error:.2f}" if error is not None else ""),
            "k (rule)": "-" if rule is None else f"{rule:g}",
            **{f"lr* at {batch}={format_value(x)}": f"{y:.3g}{EDGE if edge else ''}" for x, y, edge in points}}
