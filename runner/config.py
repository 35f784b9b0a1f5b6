"""Composing divrun's config outside a run: the resolvers its YAML files use, and `compose`.

Importing this module registers the resolvers (`${divrun_uid:}`, `${divrun_optimizer:...}`,
`${divrun_update_rule:...}`); every code path that composes a config (the `divrun` command, its pre-flight,
a second model's config, the table runner, tests, benchmarks) goes through here, and Hydra's own job runs
import it through `runner.cli`.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from importlib import resources
from typing import Callable, Iterator

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError

_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


def group_option(group: str, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml with its defaults list (same-group options and _self_) merged as Hydra does;
    entries for other groups (schedule-free's `override /schedule...: constant`) act only in a composed run."""
    folder = resources.files("runner.conf") / group
    path = folder / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={name} does not exist; choose one of {', '.join(group_options(group))}")
    node = OmegaConf.create(path.read_text())
    defaults = [entry for entry in node.pop("defaults", []) if isinstance(entry, str)]
    merged = OmegaConf.create()
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        merged = OmegaConf.merge(merged, node if entry == "_self_" else group_option(group, entry))
    return merged


def group_options(group: str) -> list[str]:
    """The options of a config group (the YAML files of conf/<group>/), sorted."""
    folder = resources.files("runner.conf") / group
    return sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))


def optimizer_config(name: str, overrides: DictConfig | None = None) -> DictConfig:
    """`${divrun_optimizer:NAME,OVERRIDES}`: a wrapper's base optimizer (`optimizer.base` of sam, asam,
    lookahead) as a nested config with `optimizer.base_overrides` merged in, resolved when the run starts so
    config.yaml records every value the run used."""
    config = group_option("optimizer", name)
    if "base" in config:
        raise ConfigError(f"optimizer.base={name} is itself a wrapper; pick a plain optimizer (sgd, adamw, lion, ...)")
    unknown = sorted(set(overrides or {}) - set(config))
    if unknown:
        raise ConfigError(f"optimizer.base_overrides: optimizer={name} has no key {', '.join(unknown)}; "
                          f"its keys: {', '.join(k for k in config if not k.startswith('_'))}")
    return OmegaConf.merge(config, overrides or {})


def update_rule(optimizer: DictConfig) -> str:
    """`${divrun_update_rule:${optimizer}}`: the `_target_` whose update a run applies to each coordinate (a
    wrapper's, SAM's or Lookahead's, base's)."""
    return str((optimizer.base_optimizer if "base_optimizer" in optimizer else optimizer)._target_)


def locate(target: str):
    """The object a `_target_` names, imported as hydra.utils.instantiate will (without its error logging)."""
    from hydra._internal.utils import _locate

    return _locate(target)


def register_resolvers() -> None:
    # cached: Hydra copies a sweep's resolver cache into each job's config, so jobs run in other processes
    # (the gpus launcher, SLURM, a requeued SLURM job) land in the folder the sweep named
    OmegaConf.register_new_resolver("divrun_uid", lambda: _UID, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("divrun_optimizer", optimizer_config, replace=True)
    OmegaConf.register_new_resolver("divrun_update_rule", update_rule, replace=True)


@contextlib.contextmanager
def composer() -> Iterator[Callable[[list[str]], DictConfig]]:
    """A function composing the config `divrun <overrides>` would run (no run folder), for composing many
    in a row; inside a Hydra app (Hydra already initialised) it composes there."""
    from hydra import compose as hydra_compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    compose_job = lambda overrides: hydra_compose("config", overrides=list(overrides))  # noqa: E731
    if GlobalHydra.instance().is_initialized():
        yield compose_job
        return
    with initialize_config_module("runner.conf", version_base="1.3"):
        yield compose_job


def compose(*overrides: str) -> DictConfig:
    """The config `divrun <overrides>` would run (no run folder, interpolations unresolved)."""
    with composer() as compose_job:
        return compose_job(overrides)


register_resolvers()
