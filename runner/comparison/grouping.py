"""Which runs are seeds of the same thing: the grouping rule of every comparison.

Candidates are the config's keys and Hydra's group choices (`optimizer`, `model`, ...), never `seed` and never
`runner.results.EXECUTION_KEYS` (device, workers, logging, checkpoint cadence, where the data lives).

Default (no `by`): what varies across the runs except the seed, named the way the user chose it.
1. Named keys: the override keys of the runs' command lines (`optimizer=adamw` gives `optimizer`,
   `optimizer.lr=0.1` gives `optimizer.lr`) and the group choices, where their values differ. A group is
   `optimizer=adamw`, not the dozen leaf keys that choice changes.
2. Any other key that differs is left out when the named keys determine it (`optimizer.betas` follows
   `optimizer=adamw`), or when it is a path that follows the seed inside each group (a per-seed teacher run
   folder): keys that only follow from others. Otherwise it joins the grouping: the runs differ in something
   nobody named (an option's default changed between two checkouts), and they are not pooled.

With `by`: the groups are those keys' values (any column of the runs frame). A candidate key that differs
inside a group without following from `by` is refused: one line naming the key, its values, and the flag that
pools it anyway (`pool`). Runs without any config (hand-made folders) take no part in the decision.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd

from runner.comparison.measures import suggest
from runner.errors import ConfigError
from runner.results import is_execution_key
from runner.tables.overrides import conf_dir, root_keys, split

SEED = "seed"


@lru_cache(maxsize=1)
def config_groups() -> tuple[str, ...]:
    """The config groups of divrun's registry (conf/<group>/), whose choices Hydra records."""
    return tuple(sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")))


def override_key(override: str) -> str | None:
    """`+optimizer.lr=0.1` -> optimizer.lr; Hydra's own overrides (hydra.*, hydra/...) -> None."""
    key = split(override)[0]
    return None if key == "hydra" or key.startswith(("hydra.", "hydra/")) else key


def format_value(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "null"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, tuple):
        return "[" + ", ".join(map(format_value, value)) + "]"
    return str(value)


@dataclass
class Grouping:
    keys: list[str]          # the grouping keys, in the order labels name them
    labels: pd.Series        # each run's group label ("optimizer=adamw"), aligned with the runs frame
    explicit: bool           # keys given by the user (--by) rather than found
    pooled: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)  # keys joined to --by by the default rule (a batch grid's rows)

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(self.labels))

    def describe(self) -> str:
        if not self.explicit:
            how = ", ".join(self.keys) + " (what differs across the runs, seeds pooled)" if self.keys else "nothing differs"
        else:
            how = f"--by {','.join(k for k in self.keys if k not in self.found)}"
            how += f" with {', '.join(self.found)} (what else differs)" if self.found else ""
        return how + (f"; pooled over {', '.join(self.pooled)}" if self.pooled else "")


def label_of(values: dict, keys: list[str]) -> str:
    return ",".join(f"{key}={format_value(values[key])}" for key in keys) or "all runs"


def candidate_keys(runs: pd.DataFrame) -> list[str]:
    groups, tops = config_groups(), root_keys() - {"hydra"}
    named = {k for overrides in runs.get("overrides", []) for k in map(override_key, overrides) if k}
    keys = [c for c in runs.columns
            if (c in groups or c in tops or c in named or ("." in c and c.split(".", 1)[0] in groups))]
    return [k for k in keys if k != SEED and not is_execution_key(k)]


def named_keys(runs: pd.DataFrame, candidates: list[str]) -> list[str]:
    """Override keys in the order the command lines name them, then the group choices."""
    order = [k for overrides in runs.get("overrides", []) for k in map(override_key, overrides) if k]
    order += [g for g in config_groups() if g in runs.columns]
    return [k for k in dict.fromkeys(order) if k in candidates]


def differing(runs: pd.DataFrame, keys: list[str], within: list[str]) -> list[str]:
    """The keys whose values differ inside some group of `within` (across all runs when it is empty)."""
    if not keys or runs.empty:
        return []
    if within:
        counts = runs.groupby(within, dropna=False, sort=False)[keys].nunique(dropna=False).max()
    else:
        counts = runs[keys].nunique(dropna=False)
    return [k for k in keys if counts[k] > 1]


def follows_seed(runs: pd.DataFrame, key: str, within: list[str]) -> bool:
    """A path that differs only with the seed inside each group: it follows from the seed (a per-seed teacher)."""
    values = runs[key].dropna()
    if values.empty or SEED not in runs or not all(isinstance(v, str) and os.path.isabs(v) for v in values):
        return False
    return not differing(runs, [key], within + [SEED])


def group_runs(runs: pd.DataFrame, by: list[str] | None = None, pool: list[str] = ()) -> Grouping:
    """The grouping of `runs` (a frame from runner.results.load); see the module docstring."""
    pool = list(pool)
    unknown = [k for k in (by or []) + pool if k not in runs.columns]
    if unknown:
        flag = "--by" if unknown[0] in (by or []) else "--pool"
        known = candidate_keys(runs) + [SEED]
        raise ConfigError(f"{flag} {unknown[0]}: the runs have no such key{suggest(unknown[0], known)} "
                          f"(config keys such as trainer.epochs work too)")
    configured = runs[runs[[c for c in candidate_keys(runs) if "." in c]].notna().any(axis=1)] \
        if len(runs) else runs
    candidates = candidate_keys(configured)
    varying = differing(configured, candidates, [])
    if by is None:
        keys = [k for k in named_keys(configured, candidates) if k in varying]
        keys = [k for k in keys if not follows_seed(configured, k, [o for o in keys if o != k])]
        loose = differing(configured, [k for k in varying if k not in keys], keys)
        keys += [k for k in loose if not follows_seed(configured, k, keys)]
        keys = [k for k in keys if k not in pool]
    else:
        keys = list(by)
        refuse_pooling(configured, [k for k in varying if k not in keys + pool], keys + pool, keys)
    labels = pd.Series([label_of(dict(zip(keys, values)), keys) for values in zip(*(runs[k] for k in keys))]
                       if keys else ["all runs"] * len(runs), index=runs.index, dtype=object)
    return Grouping(keys, labels, explicit=by is not None, pooled=pool)


def refuse_pooling(runs: pd.DataFrame, others: list[str], within: list[str], by: list[str]) -> None:
    """One line naming a key that differs inside the groups, when one does."""
    inside = [k for k in differing(runs, others, within) if not follows_seed(runs, k, within)]
    named = [k for k in named_keys(runs, inside) if k in inside]
    inside = named + differing(runs, [k for k in inside if k not in named], within + named)  # not leaves of those
    if not inside:
        return
    key = inside[0]
    values = list(dict.fromkeys(format_value(v) for v in runs[key]))
    shown = ", ".join(values[:3]) + (", ..." if len(values) > 3 else "")
    more = f" (and {len(inside) - 1} more keys)" if len(inside) > 1 else ""
    raise ConfigError(f"the runs differ in {key} ({shown}){more}, which --by {','.join(by) or '(none)'} does not "
                      f"group: add it (--by {','.join(by + [key])}) or pool them anyway with --pool {key}")
