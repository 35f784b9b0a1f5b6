"""divrun's optimizers against the official packages (the `ref` extra, part of `dev`): the same trajectories
over 20 float64 steps of the test net, both param groups, both code paths. Skips where a package is absent."""
from __future__ import annotations

import pytest
import torch

from runner.optim import param_groups
from runner.optim.adabelief import AdaBelief
from runner.optim.adamp import AdamP
from runner.optim.diffgrad import DiffGrad
from runner.optim.sgd_sai import SGDSaI
from runner.optim.sgdp import SGDP
from tests.test_optimizers import STEPS, TOLERANCE, batches, loss_of, make_net, max_difference


def oracle(module: str, name: str):
    return getattr(pytest.importorskip(module), name)


CASES = {
    "adamp": (AdamP, ("adamp", "AdamP"), dict(lr=1e-2, weight_decay=0.1, nesterov=False)),
    "adamp_nesterov": (AdamP, ("adamp", "AdamP"), dict(lr=1e-2, weight_decay=0.1, nesterov=True, wd_ratio=0.2)),
    "sgdp": (SGDP, ("adamp", "SGDP"), dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
    "sgdp_nesterov": (SGDP, ("adamp", "SGDP"), dict(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True)),
    "diffgrad": (DiffGrad, ("torch_optimizer", "DiffGrad"), dict(lr=1e-2, weight_decay=1e-2)),
    "adabelief": (AdaBelief, ("adabelief_pytorch", "AdaBelief"), dict(lr=1e-2, weight_decay=0.1)),
    "adabelief_cifar": (AdaBelief, ("adabelief_pytorch", "AdaBelief"),
                        dict(lr=1e-2, eps=1e-8, weight_decay=5e-3, weight_decouple=False, rectify=False)),
    "sgd_sai": (SGDSaI, ("sgd_sai", "SGD_sai"), dict(lr=1e-3, momentum=0.9, weight_decay=1e-2)),
}


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_package(case, foreach):
    ours, (module, name), options = CASES[case]
    official = oracle(module, name)
    extra = {"print_change_log": False} if module == "adabelief_pytorch" else {}
    model, ref_model = make_net(), make_net()
    optimizer = ours(param_groups(model, False), **options, foreach=foreach)
    reference = official(param_groups(ref_model, False), **options, **extra)
    worst = 0.0
    for batch in batches(STEPS):
        for net, opt in ((model, optimizer), (ref_model, reference)):
            loss_of(net, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        worst = max(worst, max_difference(model, ref_model))
    assert worst <= TOLERANCE, f"{case}: max |difference| {worst:.3g} from {module}.{name}"
