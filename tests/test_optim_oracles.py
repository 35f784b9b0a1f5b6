"""divrun's optimizers against the official packages (the `ref` extra, part of `dev`): the same trajectories
over 20 float64 steps of the test net, both param groups, both code paths. Skips where a package is absent.
Muon's oracle runs on linear layers (its 0.1.0 release cannot step conv kernels); adan-pytorch differs from
sail-sg's Adan at its first step, so it is compared one step from the same state."""
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


def trajectories(ours, official, model_maker=make_net, steps: int = STEPS, switch: bool = False) -> float:
    """Worst parameter difference over `steps` steps of two copies trained by `ours` and `official`
    (callables taking the model). `switch`: both are schedule-free, put in train mode first and compared in
    eval mode (x) at the end as well."""
    model, ref_model = model_maker(), model_maker()
    optimizer, reference = ours(model), official(ref_model)
    if switch:
        optimizer.train()
        reference.train()
    worst = 0.0
    for batch in batches(steps):
        for net, opt in ((model, optimizer), (ref_model, reference)):
            loss_of(net, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        worst = max(worst, max_difference(model, ref_model))
    if switch:
        optimizer.eval()
        reference.eval()
        worst = max(worst, max_difference(model, ref_model))
    return worst


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_package(case, foreach):
    ours, (module, name), options = CASES[case]
    official = oracle(module, name)
    extra = {"print_change_log": False} if module == "adabelief_pytorch" else {}
    worst = trajectories(lambda m: ours(param_groups(m, False), **options, foreach=foreach),
                         lambda m: official(param_groups(m, False), **options, **extra))
    assert worst <= TOLERANCE, f"{case}: max |difference| {worst:.3g} from {module}.{name}"


# ---- the 2025-26 baselines ------------------------------------------------------------------------------
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_schedulefree_matches_official_package(name, foreach):
    from runner.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD

    cls, official_name, options = {
        "adamw": (ScheduleFreeAdamW, "AdamWScheduleFree", dict(lr=1e-2, weight_decay=0.05, warmup_steps=5, r=0.5)),
        "sgd": (ScheduleFreeSGD, "SGDScheduleFree", dict(lr=0.2, momentum=0.9, weight_decay=1e-3, warmup_steps=4)),
    }[name]
    official = oracle("schedulefree", official_name)
    worst = trajectories(lambda m: cls(param_groups(m, False), **options, foreach=foreach),
                         lambda m: official(param_groups(m, False), **options, foreach=foreach), switch=True)
    assert worst <= TOLERANCE, f"schedulefree_{name}: max |difference| {worst:.3g} from schedulefree.{official_name}"


@pytest.mark.parametrize("options", [dict(weight_decay=0.01), dict(weight_decay=0.01, use_bias_correction=True,
                                                                   safeguard_warmup=True, d0=1e-5, decouple=False)],
                         ids=["defaults", "variants"])
def test_prodigy_matches_official_package(options):
    from runner.optim.prodigy import Prodigy

    official = oracle("prodigyopt", "Prodigy")
    worst = trajectories(lambda m: Prodigy(param_groups(m, False), **options),
                         lambda m: official(param_groups(m, False), **options))
    assert worst <= TOLERANCE, f"prodigy: max |difference| {worst:.3g} from prodigyopt.Prodigy"


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
@pytest.mark.parametrize("decouple", [False, True], ids=["l2", "decoupled"])
def test_adopt_matches_official_package(decouple, foreach):
    from runner.optim.adopt import ADOPT

    official = oracle("adopt", "ADOPT")
    options = dict(lr=3e-3, weight_decay=0.05, decouple=decouple)
    worst = trajectories(lambda m: ADOPT(param_groups(m, False), **options, foreach=foreach),
                         lambda m: official(param_groups(m, False), **options, foreach=False))
    assert worst <= TOLERANCE, f"adopt: max |difference| {worst:.3g} from torch-adopt"


def mlp() -> torch.nn.Module:
    """Linear layers only (the muon-optimizer 0.1.0 release cannot step conv kernels), one of them tall."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(108, 24), torch.nn.ReLU(), torch.nn.Linear(24, 12),
                               torch.nn.ReLU(), torch.nn.Linear(12, 5)).double()


def official_muon_groups(optimizer) -> list[dict]:
    """Our optimizer's groups in the reference's SingleDeviceMuonWithAuxAdam form (the same memberships)."""
    keys = {True: ("lr", "momentum", "weight_decay"), False: ("lr", "betas", "eps", "weight_decay")}
    return [{"params": list(g["params"]), "use_muon": g["use_muon"], **{k: g[k] for k in keys[g["use_muon"]]}}
            for g in optimizer.param_groups]


@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "per_tensor"])
def test_muon_matches_official_package(foreach):
    """KellerJordan/Muon (muon-optimizer), Newton-Schulz in bfloat16 on both sides: the same operations."""
    from runner.optim.muon import Muon

    official = oracle("muon", "SingleDeviceMuonWithAuxAdam")
    options = dict(lr=0.02, weight_decay=0.1, adamw_lr=3e-3, adamw_weight_decay=0.05)
    ours = lambda m: Muon(param_groups(m, False), model=m, **options, foreach=foreach)  # noqa: E731
    worst = trajectories(ours, lambda m: official(official_muon_groups(ours(m))), model_maker=mlp)
    assert worst <= TOLERANCE, f"muon: max |difference| {worst:.3g} from muon.SingleDeviceMuonWithAuxAdam"


@pytest.mark.parametrize("ns_dtype, cosine, relative", [("bfloat16", 0.99, 0.15), ("float64", 0.998, 0.05)])
def test_muon_agrees_with_torch_muon_on_2d_weights(ns_dtype, cosine, relative):
    """torch.optim.Muon runs the same rule on hidden 2-D weights, its Newton-Schulz in bfloat16 fused into addmm:
    an entry of one step differs by ~7% of the largest. Over 5 steps the two displacements agree in direction and
    size to that rounding (closer still when ours runs in float64: the rest is torch's bfloat16)."""
    from runner.optim.muon import Muon

    model, ref_model, start = mlp(), mlp(), mlp()
    hidden = lambda m: [m[1].weight, m[3].weight]  # noqa: E731
    ours = Muon(hidden(model), lr=0.02, weight_decay=0.1, ns_dtype=ns_dtype)
    theirs = torch.optim.Muon(hidden(ref_model), lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True)
    for batch in batches(5):
        for net, opt in ((model, ours), (ref_model, theirs)):
            loss_of(net, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    moved = lambda m: torch.cat([(p - q).flatten() for p, q in zip(hidden(m), hidden(start))])  # noqa: E731
    a, b = moved(model), moved(ref_model)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) >= cosine
    assert (a - b).norm() <= relative * b.norm()


def test_adan_step_matches_adan_pytorch_from_the_same_state():
    """adan-pytorch (lucidrains; betas as 1 - b, no moment update at its first step, so trajectories differ):
    from our state after 5 steps, its next step equals ours."""
    from runner.optim.adan import Adan

    official = oracle("adan_pytorch", "Adan")
    options = dict(lr=1e-2, betas=(0.98, 0.92, 0.99), weight_decay=0.02)
    model = make_net()
    ours = Adan(param_groups(model, False), **options)
    data = batches(6)
    for batch in data[:5]:
        loss_of(model, batch).backward()
        ours.step()
        ours.zero_grad(set_to_none=True)
    twin = make_net()
    twin.load_state_dict(model.state_dict())
    theirs = official(param_groups(twin, False), lr=options["lr"], betas=tuple(1 - b for b in options["betas"]),
                      weight_decay=options["weight_decay"])
    for p, q in zip(model.parameters(), twin.parameters()):
        s = ours.state[p]
        theirs.state[q] = {"step": s["step"], "m": s["exp_avg"].clone(), "v": s["exp_avg_diff"].clone(),
                           "n": s["exp_avg_sq"].clone(), "prev_grad": s["previous_grad"].clone()}
    for net, opt in ((model, ours), (twin, theirs)):
        loss_of(net, data[5]).backward()
        opt.step()
    assert max_difference(model, twin) <= 1e-12
