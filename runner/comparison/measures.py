"""What one run scored: per-run measures from its metric records (and summary.json), one column each.

For every eval metric M (each record key outside `train/`: `val/acc1`, `val/acc5`, `val/loss`, `val/nll`,
`val/ece`, and whatever else the runs evaluate), with `/` written `_` in the column name:
- `final_M`: the last evaluation's value. Last-epoch numbers are the default everywhere.
- `best_M` and `best_M_epoch`: the best value over the evaluations (the highest for accuracies, the lowest
  otherwise) and the epoch it came at. Labelled "best" wherever they are shown: picking the best epoch by
  the test split flatters the run.
- `final_train_loss`: the last train record's loss; `train_img_per_s`: the mean of the train records' images/s
  after the first (start-up and compilation fall in it); `wall_time_s` stays summary.json's.
- a time to target (AlgoPerf's measure) for each Target, e.g. `val/acc1=0.9`: `steps_to_val_acc1>=0.9`,
  `epochs_to_val_acc1>=0.9`, `seconds_to_val_acc1>=0.9`: the first evaluation (first record, for a train
  metric) at which M reaches the value (>= for accuracies, <= for losses); NaN where it is not reached.
  Seconds are the training clock up to that step: the sum of the train records' intervals (steps x global
  batch / images/s gives back the interval each record measured), so start-up is left out and the
  evaluations before that step are in.

A new per-run measure is one more column: compute it from `runs` and `records` and join it to the frame
`measure_runs` returns.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from runner.errors import ConfigError

HIGHER_IS_BETTER = ("acc", "img_per_s")  # name fragments; every other metric is better lower (loss, nll, ece, time)
TARGET_KINDS = ("steps", "epochs", "seconds")


def higher_is_better(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1]
    return any(fragment in leaf for fragment in HIGHER_IS_BETTER) and not leaf.startswith(TARGET_KINDS)


def column_name(metric: str) -> str:
    return metric.replace("/", "_")


@dataclass(frozen=True)
class Target:
    metric: str   # a record key, e.g. val/acc1
    value: float

    @property
    def label(self) -> str:
        return f"{column_name(self.metric)}{'>=' if higher_is_better(self.metric) else '<='}{self.value:g}"

    def column(self, kind: str) -> str:
        return f"{kind}_to_{self.label}"

    @classmethod
    def parse(cls, text: str, known: list[str] | None = None) -> "Target":
        """`val/acc1=0.9` -> Target("val/acc1", 0.9); a metric the records lack is refused when `known` is given."""
        metric, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None or not metric:
            raise ConfigError(f"--target {text}: write METRIC=VALUE, e.g. --target val/acc1=0.9")
        if known is not None and metric not in known:
            raise ConfigError(f"--target {text}: the runs record no metric {metric}{suggest(metric, known)}")
        return cls(metric, number)


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"; did you mean {close[0]}? choose one of {shown}" if close else f"; choose one of {shown}"


def measure_runs(runs: pd.DataFrame, records: pd.DataFrame, targets: tuple[Target, ...] = ()) -> pd.DataFrame:
    """The measures of each run (index: folder), from its records; see the module docstring."""
    index = pd.Index(runs["folder"], name="folder")
    parts = [eval_measures(records), train_measures(records)]
    parts = [p for p in parts + [time_to_target(runs, records, t) for t in targets] if not p.empty]
    return pd.concat(parts, axis=1).reindex(index) if parts else pd.DataFrame(index=index)


def eval_measures(records: pd.DataFrame) -> pd.DataFrame:
    evals = records[~records["metric"].str.startswith("train/")]
    if evals.empty:
        return pd.DataFrame()
    final = evals.drop_duplicates(["folder", "metric"], keep="last").pivot(index="folder", columns="metric",
                                                                           values="value")
    sign = evals["metric"].map({m: 1.0 if higher_is_better(m) else -1.0 for m in evals["metric"].unique()})
    best_rows = evals.loc[(evals["value"] * sign).groupby([evals["folder"], evals["metric"]]).idxmax()]
    best = best_rows.pivot(index="folder", columns="metric", values="value")
    best_epoch = best_rows.pivot(index="folder", columns="metric", values="epoch")
    columns = {}
    for metric in final.columns:
        name = column_name(metric)
        columns[f"final_{name}"] = final[metric]
        columns[f"best_{name}"] = best[metric]
        columns[f"best_{name}_epoch"] = best_epoch[metric]
    return pd.DataFrame(columns)


def train_measures(records: pd.DataFrame) -> pd.DataFrame:
    loss = records[records["metric"] == "train/loss"].groupby("folder")["value"].last()
    rates = records[records["metric"] == "train/img_per_s"]
    position = rates.groupby("folder").cumcount()
    counts = rates.groupby("folder")["value"].transform("size")
    steady = rates[(position > 0) | (counts == 1)]  # the first interval holds start-up, unless it is the only one
    return pd.DataFrame({"final_train_loss": loss, "train_img_per_s": steady.groupby("folder")["value"].mean()})


def training_clock(runs: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """folder, step, seconds: the training clock at each train record (see the module docstring)."""
    rates = records[records["metric"] == "train/img_per_s"][["folder", "step", "value"]]
    if rates.empty:
        return pd.DataFrame(columns=["folder", "step", "seconds"])
    world = runs["world_size"] if "world_size" in runs else pd.Series(1, index=runs.index)
    batch = runs["trainer.batch_size"] if "trainer.batch_size" in runs else pd.Series(np.nan, index=runs.index)
    global_batch = pd.Series((pd.to_numeric(batch, errors="coerce") * world.fillna(1)).to_numpy(),
                             index=runs["folder"])
    steps = rates["step"] - rates.groupby("folder")["step"].shift(1, fill_value=0)
    interval = steps * rates["folder"].map(global_batch) / rates["value"]
    return pd.DataFrame({"folder": rates["folder"], "step": rates["step"],
                         "seconds": interval.groupby(rates["folder"]).cumsum()})


def time_to_target(runs: pd.DataFrame, records: pd.DataFrame, target: Target) -> pd.DataFrame:
    rows = records[records["metric"] == target.metric]
    reached = rows["value"] >= target.value if higher_is_better(target.metric) else rows["value"] <= target.value
    first = rows[reached].drop_duplicates("folder", keep="first")[["folder", "step", "epoch"]]
    clock = training_clock(runs, records)
    if first.empty or clock.empty:
        first = first.assign(seconds=np.nan)
    else:
        first = pd.merge_asof(first.astype({"step": float}).sort_values("step"),
                              clock.astype({"step": float}).sort_values("step"),
                              on="step", by="folder", direction="backward")
    first = first.set_index("folder").reindex(pd.Index(runs["folder"], name="folder"))
    source = {"steps": "step", "epochs": "epoch", "seconds": "seconds"}
    return pd.DataFrame({target.column(kind): first[source[kind]].astype(float) for kind in TARGET_KINDS})
