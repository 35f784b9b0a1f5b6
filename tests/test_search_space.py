"""Search spaces in the options' YAML: every optimizer has one, the builders ignore it, its format is checked,
the command line narrows or replaces it, and drawn values reach the run's config exactly."""
from __future__ import annotations

import math

import optuna
import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import REPO, compose
from runner.errors import ConfigError
from runner.losses import build_loss
from runner.optim import build_optimizer
from runner.search_space import (Param, SPACE_KEY, declared, method_space, overrides, parse_edit, parse_entry,
                                 problems_of)

OPTIMIZERS = sorted(p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml"))
OPTIONS = [(group, p.stem) for group in ("optimizer", "schedule", "loss") for p in sorted((REPO / "conf" / group).glob("*.yaml"))]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_declares_a_space_with_lr_that_holds_its_default(name):
    cfg = compose(f"optimizer={name}")
    space = method_space(cfg, ["optimizer"], [], name)
    assert space, name
    keys = set(space.entries)
    if "base_optimizer" in cfg.optimizer:  # a wrapper: its own knob and its base's lr
        assert "optimizer.base_overrides.lr" in keys
        return
    lr = space.entries["optimizer.lr"]
    assert lr.log and lr.low <= cfg.optimizer.lr <= lr.high and lr.high / lr.low == pytest.approx(1000)


@pytest.mark.parametrize("group, option", OPTIONS)
def test_every_declared_space_is_well_formed_and_names_keys_of_its_option(group, option):
    cfg = compose(f"{group}={option}")
    assert list(problems_of(cfg)) == []
    for key, spec in declared(group, cfg[group]).items():
        parse_entry(key, spec, key)


def test_the_builders_never_pass_the_space_to_their_target():
    cfg = compose("optimizer=lion", "schedule=wsd", "loss=js")
    assert SPACE_KEY in cfg.optimizer and SPACE_KEY in cfg.schedule and SPACE_KEY in cfg.loss
    model = torch.nn.Linear(3, 2)
    assert type(build_optimizer(cfg.optimizer, model)).__name__ == "Lion"
    assert instantiate(cfg.schedule)(total_steps=100, steps_per_epoch=10)(99) < 1
    assert build_loss(cfg.loss)(torch.zeros(2, 3), torch.tensor([0, 1])).isfinite()
    sam = compose("optimizer=sam", "optimizer.base=adamw")
    assert SPACE_KEY in sam.optimizer.base_optimizer
    assert type(build_optimizer(sam.optimizer, model)).__name__ == "SAM"


@pytest.mark.parametrize("spec, message", [
    ({"low": 1e-2, "high": 1e-5, "log": True}, "reversed bounds (low 0.01 > high 1e-05); swap them"),
    ({"low": 0.0, "high": 1.0, "log": True}, "log: true needs low > 0"),
    ({"low": 1, "hi": 2}, "unknown field hi; use low, high, log, step, choices"),
    ({"choices": []}, "choices must be a non-empty list"),
    ({"low": 1e-3, "high": 1.0, "log": True, "step": 0.1}, "log and step cannot be combined"),
    (0.1, "expected {low: ..., high: ...[, log: true][, step: ...]}, {choices: [...]} or a list"),
])
def test_bad_entries_are_one_line_naming_the_key(spec, message):
    with pytest.raises(ConfigError) as caught:
        parse_entry("optimizer.lr", spec, "optimizer.search_space.lr")
    assert str(caught.value).startswith("optimizer.search_space.lr: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_reversed_range_in_a_yaml_stops_the_run_at_validation():
    cfg = compose("optimizer=lion")
    cfg.optimizer.search_space.lr.low = 0.1
    assert list(problems_of(cfg)) == ["optimizer.search_space.lr: reversed bounds (low 0.1 > high 0.01); swap them"]
    cfg.optimizer.search_space = OmegaConf.create({"lrr": {"low": 1e-4, "high": 1e-2}})
    assert list(problems_of(cfg))[0].startswith("optimizer.search_space.lrr: the option has no key lrr; its keys: lr")


def test_command_line_edits_narrow_replace_freeze_and_add():
    cfg = compose("optimizer=lion", "schedule=cosine")
    edits = [parse_edit("optimizer.lr={low: 1e-4}"), parse_edit("optimizer.betas=null"),
             parse_edit("lion:optimizer.weight_decay={choices: [0.0, 0.1]}"), parse_edit("sgd:optimizer.lr={low: 1}"),
             parse_edit("schedule.floor={low: 0.0, high: 0.1, step: 0.05}")]
    space = method_space(cfg, ["optimizer"], edits, "lion")
    assert space.entries["optimizer.lr"] == Param("optimizer.lr", 1e-4, 1e-2, True)  # narrowed, log kept
    assert "optimizer.betas" not in space.entries                                     # frozen at its value
    assert space.entries["optimizer.weight_decay"].choices == (0.0, 0.1)              # replaced, this method only
    assert space.entries["schedule.floor"].step == 0.05                               # added from another group
    with pytest.raises(ConfigError, match=r"^--space optimizer.lr \(lion\): reversed bounds"):
        method_space(cfg, ["optimizer"], [parse_edit("optimizer.lr={low: 1}")], "lion")
    with pytest.raises(ConfigError, match="the config has no key optimizer.lrr"):
        method_space(cfg, ["optimizer"], [parse_edit("optimizer.lrr={low: 1, high: 2}")], "lion")


def test_drawn_values_stay_in_range_and_reach_the_config_exactly_through_hydra():
    cfg = compose("optimizer=adam", "schedule=step")
    space = method_space(cfg, ["optimizer", "schedule"], [parse_edit("trainer.epochs={low: 1, high: 4}")], "adam")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    parser = OverridesParser.create()
    for _ in range(20):
        values = space.suggest(study.ask())
        lr = values["optimizer.lr"]
        assert 1e-5 <= lr <= 1e-2 and isinstance(values["trainer.epochs"], int)
        assert values["optimizer.betas"][0] in (0.0, 0.9) and values["optimizer.betas"][1] in (0.99, 0.999, 0.9999)
        assert values["schedule.gamma"] in (0.1, 0.2, 0.5)
        for override in overrides(values):  # Hydra reads back exactly the drawn value
            key, _, text = override.partition("=")
            assert parser.parse_override(override).value() == values[key], override
        run = compose("optimizer=adam", "schedule=step", *overrides(values))
        assert run.optimizer.lr == lr and list(run.optimizer.betas) == values["optimizer.betas"]


def test_log_uniform_draws_are_uniform_in_log_space():
    param = Param("lr", 1e-5, 1e-2, log=True)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    draws = [param.suggest(study.ask()) for _ in range(400)]
    exponents = [math.log10(d) for d in draws]
    below = sum(e < -3.5 for e in exponents) / len(draws)  # the middle of [-5, -2] in log10
    assert 0.42 < below < 0.58


def test_a_wrapper_tunes_its_base_through_one_base_overrides_mapping():
    cfg = compose("optimizer=sam", "optimizer.base=adamw")
    space = method_space(cfg, ["optimizer"], [], "sam")
    assert {"optimizer.rho", "optimizer.base_overrides.lr", "optimizer.base_overrides.weight_decay"} <= set(space.entries)
    values = {"optimizer.rho": 0.1, "optimizer.base_overrides.lr": 0.003, "optimizer.base_overrides.weight_decay": 0.02}
    assert overrides(values) == ["optimizer.rho=0.1", "optimizer.base_overrides={lr:0.003,weight_decay:0.02}"]
    run = compose("optimizer=sam", "optimizer.base=adamw", *overrides(values))
    base = OmegaConf.to_container(run.optimizer, resolve=True)["base_optimizer"]
    assert base["lr"] == 0.003 and base["weight_decay"] == 0.02 and run.optimizer.rho == 0.1
