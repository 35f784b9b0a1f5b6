"""Optimizer capabilities: every option declares them, wrappers report their base's, and one function reads them
from a config, a `_target_`, a class or a built optimizer alike."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO, compose
from runner.optim import Capabilities, build_optimizer, capabilities

OPTIONS = sorted(p.stem for p in (REPO / "conf" / "optimizer").glob("*.yaml"))
# The families by their papers' update rules: per-coordinate second-moment normalised (True) or not.
ADAPTIVE = {"adabelief": True, "adabelief_cifar": True, "adabelief_imagenet": True, "adadelta": True,
            "adagrad": True, "adahessian": True, "adam": True, "adamp": True, "adamw": True, "adamw8bit": True,
            "amsgrad": True, "diffgrad": True, "radam": True, "rmsprop": True, "spam": True, "stable_spam": True,
            "lion": False, "lion8bit": False, "sgd": False, "sgd_sai": False, "sgdp": False,
            "schedulefree_adamw": True, "soap": True, "adopt": True, "prodigy": True, "mars": True, "adan": True,
            # orthogonalised / layerwise-normalised matrices, not coordinates
            "muon": False, "lanton": False, "schedulefree_sgd": False,
            # wrappers around their default base, sgd
            "sam": False, "asam": False, "lookahead": False, "perpgrad": False}


@pytest.mark.parametrize("option", OPTIONS)
def test_every_optimizer_option_declares_whether_it_is_adaptive(option):
    declared = capabilities(compose(f"optimizer={option}").optimizer)
    assert isinstance(declared.adaptive, bool), f"optimizer={option} declares no `adaptive`"
    if option in ADAPTIVE:
        assert declared.adaptive is ADAPTIVE[option]


def test_second_order_and_closure_driven_optimizers():
    assert capabilities(compose("optimizer=adahessian").optimizer) == Capabilities(True, second_order=True)
    assert capabilities(compose("optimizer=sam").optimizer) == Capabilities(False, needs_closure=True)
    assert capabilities(compose("optimizer=sgd").optimizer) == Capabilities(False)
    assert capabilities(torch.optim.LBFGS).needs_closure


@pytest.mark.parametrize("wrapper", ["sam", "lookahead", "perpgrad"])
def test_a_wrapper_reports_its_base_and_adds_its_own_needs(wrapper):
    for base, adaptive in (("adamw", True), ("lion", False)):
        cfg = compose(f"optimizer={wrapper}", f"optimizer.base={base}").optimizer
        built = build_optimizer(cfg, torch.nn.Linear(3, 2), total_steps=10)
        assert capabilities(cfg) == capabilities(built)  # the config and the built optimizer agree
        assert capabilities(built).adaptive is adaptive
        assert capabilities(built).needs_closure is (wrapper == "sam")
    over_second_order = compose("optimizer=lookahead", "optimizer.base=adahessian").optimizer
    assert capabilities(over_second_order).second_order


def test_torch_classes_come_from_the_table_and_subclasses_inherit_or_override():
    class Undeclared(torch.optim.Optimizer):
        pass

    class SecondOrderSGD(torch.optim.SGD):
        second_order = True

    assert capabilities("torch.optim.AdamW").adaptive and not capabilities("torch.optim.SGD").adaptive
    assert capabilities(SecondOrderSGD) == Capabilities(False, second_order=True)
    assert capabilities(Undeclared).adaptive is None  # unknown, never guessed from the name
