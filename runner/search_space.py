"""Search spaces: what `divrun-tune` may vary in an option, declared once in the option's own YAML.

Any option of any group (`conf/optimizer/lion.yaml`, `conf/schedule/wsd.yaml`, `conf/loss/js.yaml`, ...) may
hold a `search_space:` mapping from its own keys to a range. The key is data for `divrun-tune` only: losses
and schedules take it and ignore it (so `hydra.utils.instantiate` of the node works), build_optimizer drops
it (runner.optim.BUILDER_KEYS: torch's optimizers would refuse it), and validation checks its format. The format, one entry per key of the option:

    search_space:
      lr: {low: 1.0e-5, high: 1.0e-2, log: true}     # float range, log-uniform (log: false or absent: uniform)
      weight_decay: {low: 1.0e-3, high: 1.0, log: true}
      warmup: {low: 0, high: 500, step: 50}          # int range: low and high are both ints (step optional)
      floor: {low: 0.0, high: 0.1, step: 0.01}       # float range on a grid
      nesterov: {choices: [true, false]}             # categorical: numbers, strings, booleans, null or lists
      betas: [{low: 0.8, high: 0.95}, {choices: [0.99, 0.999]}]   # a list key: one entry per element;
                                                                  # a plain value keeps that element fixed

Bounds are inclusive; `log: true` needs low > 0 and no `step`. A wrapper optimizer (sam, asam, lookahead)
tunes its own keys and its base's space (`base_overrides.<key>`, the base's declared ranges).
On the command line, `divrun-tune --space 'optimizer.lr={low: 1e-4}'` merges into the declared entry (here:
narrows the range from below, keeping high and log), a complete entry replaces it, `KEY=null` freezes the key
at its config value, and a key the option does not declare is added. `--space lion:optimizer.lr=...` applies
to the method named lion only.

A `Space` maps dotted config keys (`optimizer.lr`) to `Param`s; `Param.suggest(trial)` draws a value from an
Optuna trial and `Space.overrides(values)` turns drawn values into divrun command-line overrides.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner.errors import ConfigError

SPACE_KEY = "search_space"
FIELDS = ("low", "high", "log", "step", "choices")
FORMAT = "{low: ..., high: ...[, log: true][, step: ...]}, {choices: [...]} or a list of those per element"


@dataclass(frozen=True)
class Param:
    """One tunable scalar: a float or int range, or a categorical choice among `choices`."""
    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution([encode_choice(c) for c in self.choices])
        if isinstance(self.low, int) and isinstance(self.high, int):
            return IntDistribution(self.low, self.high, log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=None if self.step is None else float(self.step))

    def suggest(self, trial) -> Any:
        """The value an Optuna trial draws (choices decoded back to their YAML value)."""
        if self.choices is not None:
            return decode_choice(trial.suggest_categorical(self.name, [encode_choice(c) for c in self.choices]))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log,
                                   step=None if self.step is None else float(self.step))


def encode_choice(value):
    """Optuna's categorical choices must be scalars: lists are stored as their JSON text."""
    return json.dumps(value) if isinstance(value, (list, tuple)) else value


def decode_choice(value):
    return json.loads(value) if isinstance(value, str) and value.startswith("[") else value


@dataclass(frozen=True)
class Element:
    """A list-valued key tuned per element: each element a Param or a fixed value."""
    name: str
    items: tuple

    def params(self) -> list[Param]:
        return [item for item in self.items if isinstance(item, Param)]


class Space:
    """The search space of one method: dotted config key -> Param, or Element for a list tuned per element."""

    def __init__(self, entries: dict[str, Param | Element]):
        self.entries = dict(entries)

    def __bool__(self) -> bool:
        return bool(self.params())

    def params(self) -> list[Param]:
        return [p for entry in self.entries.values() for p in (entry.params() if isinstance(entry, Element) else [entry])]

    def distributions(self) -> dict:
        return {p.name: p.distribution() for p in self.params()}

    def suggest(self, trial) -> dict[str, Any]:
        """Draw every key's value from `trial`; a list key becomes one list value."""
        drawn = {p.name: p.suggest(trial) for p in self.params()}
        return self.assemble(drawn)

    def assemble(self, drawn: dict[str, Any]) -> dict[str, Any]:
        """Optuna's flat params (`optimizer.betas[0]`) as config values per key (`optimizer.betas`)."""
        values = {}
        for key, entry in self.entries.items():
            if isinstance(entry, Element):
                values[key] = [drawn[item.name] if isinstance(item, Param) else item for item in entry.items]
            else:
                values[key] = drawn[entry.name]
        return values

    def describe(self) -> dict[str, str]:
        """Each key's range as text, for reports: `1e-05..0.01 log`, `{0.9, 0.99}`."""
        return {key: (f"[{', '.join(describe(i) if isinstance(i, Param) else str(i) for i in entry.items)}]"
                      if isinstance(entry, Element) else describe(entry)) for key, entry in self.entries.items()}


def describe(param: Param) -> str:
    if param.choices is not None:
        return "{" + ", ".join(json.dumps(c) for c in param.choices) + "}"
    return f"{param.low:g}..{param.high:g}" + (" log" if param.log else "") + (f" step {param.step:g}" if param.step else "")


def overrides(values: dict[str, Any]) -> list[str]:
    """Config values as divrun overrides; keys under a wrapper's `base_overrides` become one mapping."""
    plain, nested = [], {}
    for key, value in values.items():
        parent, marker, leaf = key.partition(".base_overrides.")
        if marker:
            nested.setdefault(f"{parent}.base_overrides", {})[leaf] = value
        else:
            plain.append(f"{key}={format_value(value)}")
    return plain + [f"{key}={{{','.join(f'{k}:{format_value(v)}' for k, v in mapping.items())}}}"
                    for key, mapping in nested.items()]


def format_value(value) -> str:
    """A value in Hydra's override grammar, exactly (floats by repr, so no digit is lost)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value.replace("-", "").replace("_", "").replace(".", "").isalnum() else repr(value)
    return repr(value)


# ---- reading and checking declared entries ---------------------------------------------------------------

def parse_entry(name: str, spec, where: str) -> Param | Element:
    """One `search_space` entry as a Param (or an Element for a per-element list); ConfigError names `where`."""
    if isinstance(spec, (ListConfig, DictConfig)):
        spec = OmegaConf.to_container(spec)
    if isinstance(spec, list):
        items = tuple(parse_entry(f"{name}[{i}]", s, where) if isinstance(s, dict) else s for i, s in enumerate(spec))
        if not any(isinstance(item, Param) for item in items):
            raise ConfigError(f"{where}: a per-element list needs at least one range or choices; {FORMAT}")
        return Element(name, items)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected {FORMAT}; got {spec!r}")
    unknown = sorted(set(spec) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field {', '.join(map(str, unknown))}; use {', '.join(FIELDS)}")
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) - {"choices"}:
            raise ConfigError(f"{where}: choices cannot be combined with {', '.join(sorted(set(spec) - {'choices'}))}")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a non-empty list, e.g. {{choices: [0.9, 0.99]}}")
        return Param(name, choices=tuple(choices))
    return parse_range(name, spec, where)


def parse_range(name: str, spec: dict, where: str) -> Param:
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    for field, value in (("low", low), ("high", high)):
        if not _number(value):
            raise ConfigError(f"{where}: {field} must be a number; {FORMAT}")
    if step is not None and not (_number(step) and step > 0):
        raise ConfigError(f"{where}: step must be a positive number")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if low > high:
        raise ConfigError(f"{where}: reversed bounds (low {low:g} > high {high:g}); swap them")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0 (got low {low:g}); raise low or drop log")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined; drop one")
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if not integer:
        low, high = float(low), float(high)
    return Param(name, low, high, log, step)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def declared(group: str, option: DictConfig) -> dict[str, Any]:
    """The raw `search_space` entries of a composed option node, as dotted keys (`optimizer.lr`); a wrapper
    adds its base's (`optimizer.base_overrides.lr`)."""
    entries = {}
    base = option.get("base_optimizer") if isinstance(option, DictConfig) else None
    if isinstance(base, DictConfig) and isinstance(base.get(SPACE_KEY), DictConfig):
        entries |= {f"{group}.base_overrides.{k}": v for k, v in base[SPACE_KEY].items()}
    own = option.get(SPACE_KEY) if isinstance(option, DictConfig) else None
    if isinstance(own, DictConfig):
        entries |= {f"{group}.{k}": v for k, v in own.items()}
    return entries


def problems_of(cfg: DictConfig) -> Iterable[str]:
    """The format problems of every declared `search_space` in a composed config (for runner.validate)."""
    for group in cfg:
        option = cfg.get(group) if group != "hydra" else None
        if not isinstance(option, DictConfig) or not isinstance(option.get(SPACE_KEY), DictConfig):
            continue
        for key, spec in option[SPACE_KEY].items():
            where = f"{group}.{SPACE_KEY}.{key}"
            try:
                entry = parse_entry(f"{group}.{key}", spec, where)
            except ConfigError as error:
                yield str(error)
                continue
            yield from _fits_config(entry, option, key, where)


def _fits_config(entry: Param | Element, option: DictConfig, key: str, where: str) -> Iterable[str]:
    """A declared key must be one the option has, and a per-element entry as long as the list it tunes."""
    if key not in option:
        keys = ", ".join(str(k) for k in option if not str(k).startswith("_") and k != SPACE_KEY)
        yield f"{where}: the option has no key {key}; its keys: {keys}"
    elif isinstance(entry, Element):
        value = option.get(key)
        if not isinstance(value, ListConfig) or len(value) != len(entry.items):
            yield f"{where}: {len(entry.items)} elements for a key holding {value}; give one entry per element"


# ---- a method's space: the declared entries of its options, edited on the command line ---------------------

def parse_edit(text: str) -> tuple[str | None, str, Any]:
    """`[METHOD:]KEY=SPEC` (divrun-tune --space) as (method or None, dotted key, spec or None)."""
    head, equals, spec = text.partition("=")
    method, colon, key = head.rpartition(":")
    if not equals or not key or "." not in key:
        raise ConfigError(f"--space {text}: expected [METHOD:]GROUP.KEY=SPEC, e.g. --space 'optimizer.lr={{low: 1e-4, "
                          f"high: 1e-2, log: true}}'")
    try:
        value = OmegaConf.create(f"value: {spec}")["value"]
    except Exception as error:  # noqa: BLE001 - any YAML error: the same fix
        raise ConfigError(f"--space {text}: cannot read {spec!r} ({type(error).__name__}); {FORMAT}") from error
    value = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
    return (method if colon else None), key, value


def merge_entry(declared, edit):
    """A --space edit applied to a declared entry: range fields merge into a range (narrowing it), anything else
    replaces it."""
    if isinstance(declared, (DictConfig, ListConfig)):
        declared = OmegaConf.to_container(declared)
    if isinstance(declared, dict) and isinstance(edit, dict) and "choices" not in declared and "choices" not in edit:
        return {**declared, **edit}
    return edit


def method_space(cfg: DictConfig, groups: Iterable[str], edits: Iterable[tuple[str | None, str, Any]],
                 method: str) -> Space:
    """The space of one method: the `search_space` of its option in each of `groups` (with a wrapper's base),
    then the --space edits that apply to it (all methods, or `method:` ones)."""
    raw, edited = {}, set()
    for group in groups:
        raw |= declared(group, cfg[group])
    for only, key, spec in edits:
        if only not in (None, method):
            continue
        edited.add(key)
        if spec is None:
            raw.pop(key, None)
        else:
            raw[key] = merge_entry(raw.get(key), spec)
    entries = {}
    for key, spec in raw.items():
        group, _, rest = key.partition(".")
        where = f"--space {key} ({method})" if key in edited else f"{group}.{SPACE_KEY}.{rest} ({method})"
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT and ".base_overrides." not in key:
            raise ConfigError(f"{where}: the config has no key {key}; pass a key of {group}'s option")
        entries[key] = parse_entry(key, spec, where)
    return Space(entries)


_ABSENT = object()
