"""Learning-rate sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322, Section 2.2): how far the final loss rises away from the best lr of a sweep,

    LR sensitivity = E_{eta in [a, b]} [ min(l(A(eta)), l_0) - l* ],      l* = min_{eta in [a, b]} l(A(eta)),

with l(A(eta)) the final loss of the run trained at lr eta, l_0 the loss at initialisation (a run that diverged
or ended worse than it started counts as l_0) and the expectation over the sweep's lrs, which the paper spaces
evenly in log scale: the mean over the grid's points.

In divrun: the final loss is `final_val_loss` (the last evaluation's test-split loss, as the paper's final
validation loss; it selects nothing) and l_0 each run's `initial_train_loss` (the loss of its first step, at
the initial weights). Seeds are averaged per lr first (over the capped losses). A sweep is a group of the
comparison without its lr key: `--by optimizer,optimizer.lr` gives one number per optimizer. Finished and
diverged runs count (a diverged run as l_0, whatever it evaluated before); failed, running and preempted
ones do not. A run without `initial_train_loss` (a folder from before divrun wrote it) is left uncapped.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from runner import results
from runner.comparison.grouping import format_value, label_of
from runner.errors import ConfigError
from runner.run_folder import Status

LOSS, INITIAL = "final_val_loss", "initial_train_loss"
COUNTED = (results.FINISHED, Status.DIVERGED.value)
NOTE = ("min(final val loss, l_0) averaged over seeds per lr, minus the best lr's; the mean over the lr grid "
        "(Wortsman et al. 2023, Sec. 2.2). l_0: the loss at initialisation; a diverged run counts as l_0.")


def lr_key(keys: list[str], requested: str | bool) -> str:
    """The grouping key the sensitivity runs over: the one requested, or (True) optimizer.lr or the key named lr."""
    if isinstance(requested, str):
        found = requested if requested in keys else None
    else:
        named = [k for k in keys if k.rsplit(".", 1)[-1] == "lr"]
        found = "optimizer.lr" if "optimizer.lr" in keys else named[0] if len(named) == 1 else None
    if found is None:
        wanted = requested if isinstance(requested, str) else "optimizer.lr"
        raise ConfigError(f"--sensitivity measures over an lr sweep, and the runs are not grouped by {wanted} "
                          f"({', '.join(keys) or 'no keys'}); group by it: --by {','.join(keys + [wanted])}")
    return found


def capped_losses(runs: pd.DataFrame) -> pd.Series:
    """min(l, l_0) per run: l_0 for a diverged run; the loss itself where the run has no l_0."""
    final = pd.to_numeric(runs[LOSS], errors="coerce").where(runs["status"] == results.FINISHED)
    initial = pd.to_numeric(runs[INITIAL], errors="coerce") if INITIAL in runs else np.nan
    return np.fmin(final, initial)  # NaN on one side gives the other


def add_lr_sensitivity(c, requested: str | bool = True) -> None:
    """The comparison `c` with its lr-sensitivity section (over `requested`, or the lr key found: `lr_key`)."""
    key = lr_key(c.grouping.keys, requested)
    c.add_section(f"lr sensitivity over {key}", lr_sensitivity(c.runs, c.grouping.keys, key), NOTE)


def lr_sensitivity(runs: pd.DataFrame, keys: list[str], key: str) -> pd.DataFrame:
    """One row per sweep (the groups of `keys` without `key`): its lrs, runs, best lr, l* and sensitivity."""
    if LOSS not in runs or pd.to_numeric(runs[LOSS], errors="coerce").isna().all():
        raise ConfigError("--sensitivity needs each run's final val/loss, and the runs record none")
    counted = runs[runs["status"].isin(COUNTED)]
    counted = counted.assign(capped=capped_losses(counted)).dropna(subset=["capped"])
    sweeps = [k for k in keys if k != key]
    per_lr = counted.groupby([*sweeps, key], dropna=False, sort=False)["capped"].agg(["mean", "size"]).reset_index()
    rows = []
    for values, grid in (per_lr.groupby(sweeps, dropna=False, sort=False) if sweeps else [((), per_lr)]):
        grid = grid.sort_values(key, key=lambda lrs: pd.to_numeric(lrs, errors="coerce"), kind="stable")
        best = grid.loc[grid["mean"].idxmin()]  # a tie goes to the smallest lr, whatever order the folders load in
        values = values if isinstance(values, tuple) else (values,)
        rows.append({"sweep": label_of(dict(zip(sweeps, values)), sweeps), "lrs": len(grid),
                     "runs": int(grid["size"].sum()), f"best {key}": format_value(best[key]),
                     f"l* ({LOSS})": float(best["mean"]),
                     "lr sensitivity": float((grid["mean"] - best["mean"]).mean())})
    return pd.DataFrame(rows)
