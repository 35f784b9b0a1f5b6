"""Run folders as pandas DataFrames: one row per run, and the metric records in long form.

    import runner.results as results
    runs = results.load("outputs/multirun/2026-12-01/10-00-00-abc")   # a folder, a glob ('outputs/**'), or a list
    runs[["folder", "status", "optimizer", "seed", "final_val_acc1"]]
    records = results.load_records(runs)       # folder, record, step, epoch, metric, value: one row per value
    finished = runs[runs.status == results.FINISHED]

A run folder is any folder holding summary.json or config.yaml, found under the paths given (at any depth;
`.hydra/`, `checkpoints/` and `wandb/` are not searched). `load` raises ConfigError (one line naming the fix)
when the paths hold none. Its columns:
- `folder` (absolute path) and `status`: summary.json's `running`, `finished`, `failed`, `diverged`,
  `preempted` or `interrupted`; `not started` for a folder with a config but no summary.json yet, `unreadable`
  for a summary.json cut short. Every run stays in the frame: statistics take the `finished` ones only.
- the resolved config.yaml, flattened with dots: `optimizer.lr`, `trainer.epochs`, `seed` (lists as tuples).
  A job refused before it started has no config.yaml; its composed config (`.hydra/config.yaml`) stands in.
- Hydra's recorded choice for each config group (`optimizer`: "adamw", `model`, `dataset`, `loss`, ...: the
  name the user picked, from `.hydra/hydra.yaml`), and `overrides`: the command line's overrides for this
  job (`.hydra/overrides.yaml`, a tuple of strings such as "optimizer=adamw").
- every summary.json field as written: `final_val_acc1`, `best_val_acc1`, `final_train_loss`, `steps`,
  `epochs`, `wall_time_s`, `world_size`, `name`, `error`, ...
Rows are in natural order of their folders (job 2 before job 10).

`load_records` reads metrics.jsonl: `record` is the line's index in the file, `metric` the record key
(`train/loss`, `val/acc1`, ...), `value` a float. A line cut short by a kill is skipped.

`EXECUTION_KEYS` are config keys that say where or how a run executes (its device, workers, logging,
checkpoint cadence, where its data lives), not what it computes: comparisons never group by them or refuse
to pool over them, and a resumed sweep may change them.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
from pathlib import Path
from typing import Iterable, Union

import numpy as np
import pandas as pd
import yaml

from runner import run_folder
from runner.errors import ConfigError
from runner.run_folder import Status

FINISHED = Status.FINISHED.value
NOT_STARTED, UNREADABLE = "not started", "unreadable"  # a folder's state when its summary.json says nothing
RUN_MARKERS = (run_folder.SUMMARY, run_folder.CONFIG)
NOT_SEARCHED = {".hydra", "checkpoints", "wandb", ".submitit"}
EXECUTION_KEYS = {"resume", "notes", "dataset.root", "dataset.download", "trainer.device", "trainer.num_workers",
                  "trainer.resume", "trainer.log_every", "trainer.checkpoint_every", "trainer.checkpoint_every_steps",
                  "trainer.keep_checkpoints", "trainer.eval_batch_size", "trainer.node_rank", "trainer.rdzv_endpoint",
                  "trainer.compile", "trainer.channels_last", "trainer.deterministic"}
EXECUTION_PREFIXES = ("logger.",)
RUNTIME_BLOCK, CHOICES_BLOCK = "\n  runtime:\n", "\n    choices:\n"  # in hydra.yaml as Hydra saves it
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster on a thousand folders
Paths = Union[str, os.PathLike, Iterable[Union[str, os.PathLike]]]


def is_execution_key(key: str) -> bool:
    return key in EXECUTION_KEYS or key.startswith(EXECUTION_PREFIXES)


# ---- finding run folders ------------------------------------------------------------------------------
def find_runs(paths: Paths) -> list[Path]:
    """Every run folder under the paths or globs (each found once), in natural order."""
    patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    roots = set()
    for pattern in map(str, patterns):
        matches = glob.glob(pattern, recursive=True) if glob.has_magic(pattern) else [pattern]
        roots.update(os.path.abspath(m) for m in matches if os.path.isdir(m))
    found, searched = set(), set()
    for root in sorted(roots, key=len):  # parents first: `outputs/**` searches `outputs` once
        if root not in searched and not any(str(parent) in searched for parent in Path(root).parents):
            searched.add(root)
            _search(root, found)
    return sorted(map(Path, found), key=lambda path: (natural_key(path), str(path)))  # ties: not set order


def _search(folder: str, found: set) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    if any(e.name in RUN_MARKERS for e in entries):
        found.add(folder)
        return
    for entry in entries:
        if entry.name not in NOT_SEARCHED and not entry.name.startswith(".") and entry.is_dir():
            _search(entry.path, found)


def natural_key(path) -> list:
    """Digits compare as numbers: .../2-optimizer=sgd before .../10-optimizer=sgd."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def no_runs_error(paths: Paths) -> ConfigError:
    shown = paths if isinstance(paths, (str, os.PathLike)) else " ".join(map(str, paths))
    return ConfigError(f"{shown}: no run folders there (folders holding summary.json or config.yaml); pass a run "
                       f"or sweep folder, e.g. outputs/multirun/<date>/<time>, or a glob such as 'outputs/**'")


# ---- one row per run ----------------------------------------------------------------------------------
def load(paths: Paths) -> pd.DataFrame:
    """One row per run folder under `paths`: folder, status, the flattened config, Hydra's choices and
    overrides, the summary.json fields (see the module docstring)."""
    folders = find_runs(paths)
    if not folders:
        raise no_runs_error(paths)
    frame = pd.DataFrame([read_run(folder) for folder in folders])
    first = ["folder", "status"]
    return frame[first + [c for c in frame.columns if c not in first]]


def read_run(folder: Path) -> dict:
    summary, status = summary_and_status(folder)
    config = read_yaml(folder / run_folder.CONFIG)
    if config is None:
        config = _composed_config(folder / ".hydra" / "config.yaml")
    choices = hydra_choices(folder / ".hydra" / "hydra.yaml")
    overrides = read_yaml(folder / ".hydra" / "overrides.yaml") or []
    row = flatten(config or {})
    row.update({group: option for group, option in choices.items() if not group.startswith("hydra/")})
    row["overrides"] = tuple(overrides)
    row.update(summary)
    row.update(folder=str(folder), status=status)
    return row


def summary_and_status(folder: Path) -> tuple[dict, str]:
    """A run folder's summary.json and its status (`not started` without one, `unreadable` if cut short)."""
    try:
        summary = json.loads((Path(folder) / run_folder.SUMMARY).read_text())
    except FileNotFoundError:
        return {}, NOT_STARTED
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}, UNREADABLE
    return summary, str(summary.get("status", UNREADABLE))


def read_yaml(path: Path):
    """A YAML file's content; None when it is absent or cut short."""
    try:
        with open(path) as handle:
            return yaml.load(handle, Loader=Loader)
    except (FileNotFoundError, yaml.YAMLError):
        return None


def hydra_choices(path: Path) -> dict:
    """hydra.runtime.choices from a job's hydra.yaml. Only its `choices:` block is parsed when it is found
    where Hydra writes it (two thirds of the YAML a folder holds is this file); otherwise the whole file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    runtime = text.find(RUNTIME_BLOCK)
    start = text.find(CHOICES_BLOCK, runtime) if runtime >= 0 else -1
    if start >= 0:
        lines = text[start + len(CHOICES_BLOCK):].split("\n")
        block = itertools.takewhile(lambda line: line.startswith(" " * 6), lines)
        return yaml.load("\n".join(line[6:] for line in block), Loader=Loader) or {}
    hydra = yaml.load(text, Loader=Loader) or {}
    return ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}


def _composed_config(path: Path) -> dict | None:
    """Hydra's composed config of a job refused before it wrote config.yaml, resolved where it can be."""
    raw = read_yaml(path)
    if raw is None:
        return None
    from omegaconf import OmegaConf

    import runner.config  # noqa: F401 - registers divrun's resolvers

    try:
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here: keep it as written
        return raw


def flatten(node: dict, prefix: str = "") -> dict:
    """{"optimizer": {"lr": 0.1, "betas": [0.9, 0.99]}} -> {"optimizer.lr": 0.1, "optimizer.betas": (0.9, 0.99)}."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = hashable(value)
    return out


def hashable(value):
    """Lists as tuples and dicts as JSON text, so every value can be grouped and compared."""
    if isinstance(value, (list, tuple)):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return value


# ---- the metric records in long form ------------------------------------------------------------------
def load_records(runs: pd.DataFrame | Paths) -> pd.DataFrame:
    """Every value of every metrics.jsonl record of the runs (a frame from `load`, or paths), in file order."""
    folders = list(runs["folder"]) if isinstance(runs, pd.DataFrame) else [str(f) for f in find_runs(runs)]
    parsed = [read_records(Path(folder) / run_folder.METRICS) for folder in folders]
    counts = np.array([len(rows) for rows in parsed])
    columns = ["folder", "record", "step", "epoch", "metric", "value"]
    if not counts.sum():
        return pd.DataFrame(columns=columns)
    wide = pd.DataFrame.from_records([row for rows in parsed for row in rows])
    metrics = [c for c in wide.columns if c not in ("step", "epoch")]
    values = wide[metrics].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    row, metric = np.nonzero(~np.isnan(values))  # row-major: each record's values in turn, in file order
    run = np.repeat(np.arange(len(folders)), counts)[row]
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = lambda name: wide[name].to_numpy()[row] if name in wide else np.full(len(row), np.nan)
    return pd.DataFrame({"folder": np.asarray(folders, dtype=object)[run], "record": row - first_row[run],
                         "step": position("step"), "epoch": position("epoch"),
                         "metric": np.asarray(metrics, dtype=object)[metric], "value": values[row, metric]})


def read_records(path: Path) -> list[dict]:
    """The records of one metrics.jsonl, parsed in one pass (run_folder.read_metrics reads line by line and
    raises at a line cut short by a kill; here such a line is skipped). Empty when the file is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return json.loads("[" + ",".join(lines) + "]")  # one parse per file: the fast path
    except json.JSONDecodeError:  # a line cut short by a kill: keep the whole ones
        rows = []
        for line in lines:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows
