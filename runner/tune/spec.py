"""What a tune is: its methods and their spaces, the shared overrides, the budget; written to `tune.json` in the
tune folder (and into every study's attributes, so a `--worker` with only the storage URL can join).

A method is one choice in each config group named before `--` (`optimizer=adamw,lion,sgd` makes three);
its space is the `search_space` of those options, after the `--space` edits (runner/search_space.py).
"""
from __future__ import annotations

import itertools
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runner.errors import ConfigError
from runner.search_space import Space, method_space, parse_entry

KIND, FILE = "divrun-tune", "tune.json"
DEFAULT_HOLDOUT = 0.1  # the share of the training set held out when the command sets no dataset.holdout


@dataclass
class Method:
    name: str              # the folder and study name: the options, joined by "-"
    choices: list[str]     # group=option overrides, e.g. ["optimizer=lion"]
    space: dict            # dotted key -> raw search_space entry (after --space edits)

    def parsed_space(self) -> Space:
        return Space({key: parse_entry(key, spec, f"{key} ({self.name})") for key, spec in self.space.items()})


@dataclass
class Spec:
    tune_id: str           # unique across storages: the folder name and a random suffix
    dir: str               # the tune folder (absolute): trial and re-run folders go under it
    methods: list[Method]
    base: list[str]        # the overrides after `--`, shared by every run
    trials: int
    seeds: int
    sampler: str = "qmc"   # qmc (Optuna's QMCSampler, scrambled Halton) or tpe
    sampler_seed: int = 0
    prune: bool = False    # Optuna's median pruner on the metric at evaluation points
    metric: str = "holdout/acc1"
    storage: str = ""      # the Optuna storage URL as given (a password is not written; see safe_storage)
    kind: str = KIND
    notes: list[str] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        return self.metric.rsplit("/", 1)[-1].startswith("acc")

    @property
    def direction(self) -> str:
        return "maximize" if self.higher_is_better else "minimize"

    def study_name(self, method: Method) -> str:
        return f"{KIND}/{self.tune_id}/{method.name}"

    def method(self, name: str) -> Method:
        return next(m for m in self.methods if m.name == name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, raw: dict) -> "Spec":
        raw = dict(raw)
        raw["methods"] = [Method(**m) for m in raw["methods"]]
        return cls(**raw)

    def save(self) -> None:
        path = Path(self.dir) / FILE
        tmp = path.with_suffix(f".{uuid.uuid4().hex}")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)


def load(folder: Path) -> Spec:
    """The spec of a tune folder; a folder of another kind is refused with what it is and what to do."""
    folder = Path(folder)
    path = folder / FILE
    if not path.exists():
        if not folder.is_dir():
            raise ConfigError(f"--resume {folder}: no such folder; pass the folder divrun-tune printed")
        if (folder / "config.yaml").exists():
            raise ConfigError(f"--resume {folder}: this is a divrun run folder, not a tune folder; "
                              f"continue it with `divrun resume={folder}`")
        raise ConfigError(f"--resume {folder}: not a divrun-tune folder (no {FILE}); pass the folder divrun-tune printed")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"--resume {folder}: {FILE} is unreadable ({error}); pass the folder divrun-tune printed") from error
    if raw.get("kind") != KIND:
        raise ConfigError(f"--resume {folder}: {FILE} is not a divrun-tune record; pass the folder divrun-tune printed")
    spec = Spec.from_dict(raw)
    spec.dir = str(folder.resolve())
    return spec


def safe_storage(url: str) -> str:
    """The storage URL without its password (tune.json and the console are no place for one)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL: nothing to hide in it
        return url


def methods_of(sweeps: list[str], conf_groups: list[str]) -> list[tuple[str, list[str]]]:
    """(name, choices) for every combination of the `group=a,b` arguments before `--`."""
    axes = []
    for sweep in sweeps:
        group, equals, options = sweep.partition("=")
        if not equals or not options:
            raise ConfigError(f"{sweep}: name the methods as group=option,option (e.g. optimizer=adamw,lion,sgd); "
                              f"put other overrides after --")
        if group not in conf_groups:
            raise ConfigError(f"{sweep}: {group} is not a config group ({', '.join(conf_groups)}); "
                              f"methods are group choices, other overrides go after --")
        axes.append([f"{group}={option}" for option in options.split(",") if option])
    methods = [("-".join(c.partition("=")[2] for c in combo), list(combo)) for combo in itertools.product(*axes)]
    names = [name for name, _ in methods]
    if len(set(names)) < len(names):
        raise ConfigError(f"{' '.join(sweeps)}: a method is named twice; list each option once")
    return methods


def build_method(name: str, choices: list[str], cfg, edits) -> Method:
    """A method with its space from the composed config `cfg`; a method with nothing to tune is refused."""
    groups = [c.partition("=")[0] for c in choices]
    space = method_space(cfg, groups, edits, name)
    if not space:
        group, option = choices[0].partition("=")[::2]
        raise ConfigError(f"{choices[0]} has no search space: add a `search_space:` key to conf/{group}/{option}.yaml "
                          f"(e.g. search_space: {{KEY: {{low: 0.1, high: 1.0}}}}; the format is in "
                          f"runner/search_space.py) or pass --space '{group}.KEY={{low: ..., high: ...}}'")
    raw = {key: _raw(entry) for key, entry in space.entries.items()}
    return Method(name, list(choices), raw)


def _raw(entry):
    """A parsed entry back to its YAML form (what tune.json records and a worker re-parses)."""
    from runner.search_space import Element, Param

    if isinstance(entry, Element):
        return [_raw(item) if isinstance(item, Param) else item for item in entry.items]
    if entry.choices is not None:
        return {"choices": list(entry.choices)}
    raw = {"low": entry.low, "high": entry.high}
    if entry.log:
        raw["log"] = True
    if entry.step is not None:
        raw["step"] = entry.step
    return raw
