"""divrun overrides as a table uses them: merging the protocol's, a row's, a column's and a cell's lists,
filling the recipe placeholders, and asking whether this checkout has every option and key they name.

Placeholders (filled by the table runner, never seen by Hydra):
    ${data:}          the datasets folder (`--data`, `make reproduce-table DATA=...`)
    ${data:imagenet}  a folder under it
    ${cell:row/col}   the run folder of another cell of the same table, same seed (a teacher, a schedule source)
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from omegaconf import OmegaConf

PLACEHOLDER = re.compile(r"\$\{(data|cell):([^}]*)\}")
SAFE_VALUE = re.compile(r"^[\w./@:+-]*$")
_ABSENT = object()


def conf_dir() -> Path:
    return Path(str(resources.files("runner.conf")))


def split(override: str) -> tuple[str, str]:
    """`+a.b=v` -> ("a.b", "v"): the key without Hydra's +/++/~ prefix, and the value."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


@lru_cache(maxsize=1)
def root_keys() -> frozenset[str]:
    """The plain top-level keys of conf/config.yaml (seed, resume, notes, hydra, ...)."""
    root = yaml.safe_load((conf_dir() / "config.yaml").read_text())
    return frozenset(root) - {"defaults"}


def is_group(key: str) -> bool:
    """A group choice (`optimizer=adamw`, `distill=kd`) rather than a value: conf/<key>/ is a folder, or the
    key is a top-level name the root config does not hold (a group this checkout lacks)."""
    return (conf_dir() / key.replace(".", "/")).is_dir() or ("." not in key and key not in root_keys())


def merge(*lists: list[str]) -> list[str]:
    """Concatenate override lists, a later value of a key replacing an earlier one. A later group choice that
    differs from an earlier one also drops the earlier `group.*` values (they belonged to the other option)."""
    merged: dict[str, str] = {}
    for override in (o for overrides in lists for o in overrides):
        key, value = split(override)
        previous = merged.pop(key, None)
        if previous is not None and is_group(key) and split(previous)[1] != value:
            merged = {k: v for k, v in merged.items() if not k.startswith(key + ".")}
        merged[key] = override
    return list(merged.values())


def quote(value: str) -> str:
    """A path as a Hydra override value: quoted when it holds characters the override grammar reads."""
    return value if SAFE_VALUE.match(value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fill(override: str, data_root: Path, cell_dir) -> str:
    """Replace the placeholders: `cell_dir(name)` gives the run folder of cell `name` at this run's seed."""
    def replace(match: re.Match) -> str:
        kind, argument = match.groups()
        path = (data_root / argument if argument else data_root) if kind == "data" else cell_dir(argument)
        return str(Path(path).resolve())

    if not PLACEHOLDER.search(override):
        return override
    key, value = override.split("=", 1)
    return f"{key}={quote(PLACEHOLDER.sub(replace, value))}"


def cell_references(override: str) -> list[str]:
    return [argument for kind, argument in PLACEHOLDER.findall(override) if kind == "cell"]


def missing_features(overrides: list[str]) -> list[str]:
    """What this checkout lacks for these overrides: group options without their YAML, keys that no chosen
    option holds. Empty when the overrides can compose (other errors surface when the run starts)."""
    choices = {k: v for k, v in map(split, overrides) if is_group(k) and not k.startswith("hydra")}
    missing = [f"conf/{k.replace('.', '/')}/{v}.yaml" for k, v in choices.items()
               if not (conf_dir() / k.replace(".", "/") / f"{v}.yaml").exists()]
    if missing:
        return missing
    cfg = composed(tuple(f"{k}={v}" for k, v in sorted(choices.items())))
    keys = [split(o)[0] for o in overrides if not o.startswith("+") and not is_group(split(o)[0])]
    return [f"key {key}" for i, key in enumerate(keys) if not key.startswith("hydra.")
            and not any(key.startswith(earlier + ".") for earlier in keys[:i])  # in a dict an earlier one sets
            and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT]


@lru_cache(maxsize=256)
def composed(overrides: tuple[str, ...]):
    """The config divrun would compose for these overrides (no run folder, no resolution)."""
    from runner.config import compose

    return compose(*overrides)
