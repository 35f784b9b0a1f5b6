"""The 2025-26 baselines (Muon, schedule-free AdamW/SGD, SOAP, ADOPT, Prodigy, MARS, Adan, LANTON) against
per-parameter references written here from their equations (plain loops, float64, Python scalars where the
rule has them), over 20 steps of tests/test_optimizers.py's net (conv, BatchNorm, linear head, 1-element
parameter; decay and no-decay groups, the latter on its own lr), on every path each optimizer has; plus the
branches the references must take, and state_dict round trips that continue bit-identically."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from runner.optim import base, param_groups
from runner.optim.adan import Adan
from runner.optim.adopt import ADOPT
from runner.optim.lanton import LANTON
from runner.optim.mars import MARS
from runner.optim.muon import Muon, orthogonalize
from runner.optim.prodigy import Prodigy
from runner.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD
from runner.optim.soap import SOAP
from tests.test_optimizers import (NO_DECAY_LR_SCALE, TOLERANCE, batches, count, groups_with, loss_of, make_net,
                                   max_difference)

STEPS = 20


def newton_schulz(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """X <- a X + (b XX^T + c (XX^T)^2) X on X = M / (||M||_F + 1e-7), on the wide orientation."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = m.T if m.shape[0] > m.shape[1] else m
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if m.shape[0] > m.shape[1] else x


# ---- references ----------------------------------------------------------------------------------------
@torch.no_grad()
def muon_reference(groups, states, t, counters, model):
    """Muon on >= 2-D weights except the output layer (model.head), the reference's AdamW on the rest."""
    for h, params in groups:
        for p in params:
            g = p.grad
            if p.ndim >= 2 and p is not model.head.weight:
                st = states.setdefault(p, {"m": torch.zeros_like(p)})
                st["m"] = h["momentum"] * st["m"] + (1 - h["momentum"]) * g
                u = (1 - h["momentum"]) * g + h["momentum"] * st["m"]
                o = newton_schulz(u.reshape(len(u), -1)).reshape(p.shape) * max(1, p.shape[-2] / p.shape[-1]) ** 0.5
                p.copy_(p * (1 - h["lr"] * h["weight_decay"]) - h["lr"] * o)
                count(counters, "muon")
            else:
                b1, b2 = h["adamw_betas"]
                lr = h["adamw_lr"] * h["lr"] / h["base_lr"]
                wd = h["adamw_weight_decay"] if h is groups[0][0] else 0.0  # the decay group
                st = states.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                update = (st["m"] / (1 - b1 ** t)) / ((st["v"] / (1 - b2 ** t)).sqrt() + h["adamw_eps"])
                p.copy_(p * (1 - lr * wd) - lr * update)
                count(counters, "adamw")


def schedulefree_reference(adam: bool):
    """x (average) and z (base iterate) kept explicitly; the model holds y = (1-b1) z + b1 x."""
    @torch.no_grad()
    def reference(groups, states, t, counters, model):
        for h, params in groups:
            clock = states.setdefault(("clock", id(h)), {"weight_sum": 0.0, "lr_max": -1.0})
            lr = h["lr"] * min(1.0, t / h["warmup_steps"]) if h["warmup_steps"] else h["lr"]
            clock["lr_max"] = max(clock["lr_max"], lr)
            weight = t ** h["r"] * clock["lr_max"] ** h["weight_lr_power"]
            clock["weight_sum"] += weight
            c = weight / clock["weight_sum"]
            b1 = h["betas"][0] if adam else h["momentum"]
            for p in params:
                st = states.setdefault(p, {"x": p.clone(), "z": p.clone(), "v": torch.zeros_like(p)})
                g = p.grad
                if adam:
                    b2 = h["betas"][1]
                    st["v"] = b2 * st["v"] + (1 - b2) * g * g
                    d = g / ((st["v"] / (1 - b2 ** t)).sqrt() + h["eps"]) + h["weight_decay"] * p
                else:
                    d = g + h["weight_decay"] * p
                st["z"] = st["z"] - lr * d
                st["x"] = (1 - c) * st["x"] + c * st["z"]
                p.copy_((1 - b1) * st["z"] + b1 * st["x"])
            count(counters, "warmup" if lr < h["lr"] else "constant")
    return reference


@torch.no_grad()
def soap_reference(groups, states, t, counters, model):
    """Adam in the eigenbasis of L_i = EMA of G_(i) G_(i)^T (every dim, 1-D tensors unrotated)."""
    for h, params in groups:
        b1, b2 = h["betas"]
        for p in params:
            g = p.grad
            dims = [] if p.ndim == 1 else [i for i in range(p.ndim) if p.shape[i] <= h["max_precond_dim"]]

            def rotate(x, qs, back=False):
                for i in dims:  # Q_i^T along dim i (Q_i with back=True)
                    x = torch.movedim(torch.tensordot(qs[i] if back else qs[i].T, x, dims=([1], [i])), 0, i)
                return x

            def accumulate(st):
                for i in dims:
                    gi = torch.movedim(g, i, 0).reshape(g.shape[i], -1)
                    st["L"][i] = st["L"][i].lerp(gi @ gi.T, 1 - b2)

            count(counters, "identity", int(p.ndim > 1 and len(dims) < p.ndim))
            if p not in states:
                st = states[p] = {"L": {i: torch.zeros(p.shape[i], p.shape[i], dtype=p.dtype) for i in dims},
                                  "m": torch.zeros_like(p), "v": torch.zeros_like(p), "k": 0}
                accumulate(st)
                st["Q"] = {i: torch.linalg.eigh(st["L"][i])[1].flip(1) for i in dims}
                continue
            st = states[p]
            st["k"] += 1
            k = st["k"]
            gp = rotate(g, st["Q"])
            st["m"] = b1 * st["m"] + (1 - b1) * gp
            st["v"] = b2 * st["v"] + (1 - b2) * gp * gp
            step = h["lr"] * math.sqrt(1 - b2 ** k) / (1 - b1 ** k)
            p.copy_(p - step * rotate(st["m"] / (st["v"].sqrt() + h["eps"]), st["Q"], back=True))
            p.copy_(p * (1 - h["lr"] * h["weight_decay"]))
            m_orig = rotate(st["m"], st["Q"], back=True)
            accumulate(st)
            if k % h["precondition_frequency"] == 0 and dims:
                for i in dims:
                    order = torch.argsort(torch.diag(st["Q"][i].T @ st["L"][i] @ st["Q"][i]), descending=True)
                    st["v"] = st["v"].index_select(i, order)
                    st["Q"][i] = torch.linalg.qr(st["L"][i] @ st["Q"][i][:, order])[0]
                count(counters, "refreshed")
            st["m"] = rotate(m_orig, st["Q"])


@torch.no_grad()
def adopt_reference(groups, states, t, counters, model):
    for h, params in groups:
        b1, b2 = h["betas"]
        for p in params:
            g = p.grad + (0 if h["decouple"] else h["weight_decay"] * p)
            if t == 1:
                states[p] = {"m": torch.zeros_like(p), "v": g * g}
                continue
            st = states[p]
            if h["decouple"]:
                p.copy_(p * (1 - h["lr"] * h["weight_decay"]))
            clip = (t - 1) ** 0.25
            normed = (g / torch.clamp(st["v"].sqrt(), min=h["eps"])).clamp(-clip, clip)
            count(counters, "clipped", int((g / torch.clamp(st["v"].sqrt(), min=h["eps"])).abs().gt(clip).sum()))
            st["m"] = b1 * st["m"] + (1 - b1) * normed
            p.copy_(p - h["lr"] * st["m"])
            st["v"] = b2 * st["v"] + (1 - b2) * g * g


@torch.no_grad()
def prodigy_reference(groups, states, t, counters, model):
    """Python floats for d, r and sum|s|, as the paper's Algorithm writes them."""
    est = states.setdefault("estimate", {"d": groups[0][0]["d0"], "d_max": groups[0][0]["d0"], "r": 0.0})
    h0 = groups[0][0]
    b1, b2 = h0["betas"]
    b3 = math.sqrt(b2)
    lr = max(h["lr"] for h, _ in groups)
    d, d0 = est["d"], h0["d0"]
    dlr = d * lr
    r, s_sum = est["r"] * b3, 0.0
    for h, params in groups:
        for p in params:
            g = p.grad
            st = states.setdefault(p, {"p0": p.clone(), "s": torch.zeros_like(p), "m": torch.zeros_like(p),
                                       "v": torch.zeros_like(p)})
            r += (d / d0) * dlr * torch.dot(g.flatten(), (st["p0"] - p).flatten()).item()
            st["m"] = b1 * st["m"] + d * (1 - b1) * g
            st["v"] = b2 * st["v"] + d * d * (1 - b2) * g * g
            st["s"] = b3 * st["s"] + (d / d0) * dlr * g
            s_sum += st["s"].abs().sum().item()
    d_hat = r / s_sum
    if d == d0:
        d = max(d, d_hat)
    est["d_max"] = max(est["d_max"], d_hat)
    d = min(est["d_max"], d * math.inf)  # growth_rate inf
    count(counters, "grew", int(d > est["d"]))
    est.update(d=d, r=r)
    counters["d"] = d
    for h, params in groups:
        for p in params:
            st = states[p]
            p.copy_(p * (1 - h["weight_decay"] * dlr) - dlr * st["m"] / (st["v"].sqrt() + d * h["eps"]))


@torch.no_grad()
def mars_reference(groups, states, t, counters, model):
    for h, params in groups:
        for p in params:
            g = p.grad
            st = states.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "last": torch.zeros_like(p)})
            if p.ndim == 2:
                b1, b2 = h["betas"]
                c = g + h["gamma"] * b1 / (1 - b1) * (g - st["last"])
                if c.norm().item() > 1:
                    c = c / c.norm()
                    count(counters, "clipped")
                st["m"] = b1 * st["m"] + (1 - b1) * c
                st["v"] = b2 * st["v"] + (1 - b2) * c * c
                lr, wd = h["lr"], h["weight_decay"]
                count(counters, "mars")
                if h.get("mars_type") == "mars-lion":
                    p.copy_(p - lr * (wd * p + st["m"].sign()))
                    st["last"] = g.clone()
                    continue
            else:
                b1, b2 = h["betas_1d"]
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                lr = h["lr"] * h["lr_1d"] / h["base_lr"]
                wd = h["weight_decay_1d"] if h is groups[0][0] else 0.0  # every group but the no-decay one
                count(counters, "adamw")
            denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** t) + h["eps"]) * (1 - b1 ** t)
            p.copy_(p - lr * (wd * p + st["m"] / denom))
            st["last"] = g.clone()


@torch.no_grad()
def adan_reference(groups, states, t, counters, model):
    for h, params in groups:
        b1, b2, b3 = h["betas"]
        for p in params:
            g = p.grad
            st = states.setdefault(p, {"m": torch.zeros_like(p), "d": torch.zeros_like(p), "n": torch.zeros_like(p),
                                       "prev": g.clone()})
            diff = g - st["prev"]
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["d"] = b2 * st["d"] + (1 - b2) * diff
            st["n"] = b3 * st["n"] + (1 - b3) * (g + b2 * diff) ** 2
            denom = (st["n"] / (1 - b3 ** t)).sqrt() + h["eps"]
            u = h["lr"] / (1 - b1 ** t) * st["m"] / denom + h["lr"] * b2 / (1 - b2 ** t) * st["d"] / denom
            p.copy_((p - u) / (1 + h["lr"] * h["weight_decay"]))
            st["prev"] = g.clone()


@torch.no_grad()
def lanton_reference(groups, states, t, counters, model):
    """Per norm group: noise H in the dual norm of G - G_prev, rates from the group's least noisy layer."""
    for h, params in groups:
        b1, b2 = h["betas"]
        kinds = {}
        for p in params:
            kind = "vector" if p.ndim < 2 else "output" if p is model.head.weight else "hidden"
            kinds.setdefault(kind, []).append(p)
        for kind, members in kinds.items():
            lr = {"hidden": h["lr"], "output": h["lr_output"], "vector": h["lr_vector"]}[kind] * h["lr"] / h["base_lr"]
            for p in members:
                st = states.setdefault(p, {"B": torch.zeros_like(p), "prev": torch.zeros_like(p), "H": 0.0})
                st["B"] = b1 * st["B"] + (1 - b1) * p.grad
                diff = p.grad - st["prev"]
                if kind == "hidden":
                    m = diff.reshape(len(diff), -1)
                    dual = math.sqrt(m.shape[0] / m.shape[1]) * (m * newton_schulz(m)).sum().item()
                elif kind == "output":
                    dual = diff.abs().sum().item()
                else:
                    dual = math.sqrt(diff.numel()) * diff.norm().item()
                st["H"] = b2 * st["H"] + (1 - b2) * dual ** 2
                st["prev"] = p.grad.clone()
            floor = min(states[p]["H"] for p in members)
            for p in members:
                st = states[p]
                rate = lr * math.sqrt((floor + h["eps"]) / (st["H"] + h["eps"]))
                count(counters, "slowed", int(rate < lr * (1 - 1e-9)))
                if kind == "hidden":
                    m = st["B"].reshape(len(p), -1)
                    step = -math.sqrt(m.shape[0] / m.shape[1]) * newton_schulz(m).reshape(p.shape)
                elif kind == "output":
                    step = -st["B"].sign()
                else:
                    step = -math.sqrt(p.numel()) * st["B"] / st["B"].norm()
                p.copy_(p * (1 - rate * h["weight_decay"]) + rate * step)


# ---- the comparisons -----------------------------------------------------------------------------------
def muon_factory(groups, model, foreach, **options):
    return Muon(groups, model=model, ns_dtype="float64", foreach=foreach, **options)


def lanton_factory(groups, model, foreach, **options):
    return LANTON(groups, model=model, ns_dtype="float64", **options)


def plain(cls, takes_foreach=True):
    paths = (lambda foreach: {"foreach": foreach}) if takes_foreach else (lambda foreach: {})
    return lambda groups, model, foreach, **options: cls(groups, **options, **paths(foreach))


CASES = {
    "muon": (muon_factory, muon_reference, dict(lr=0.02, momentum=0.95, weight_decay=0.1, adamw_lr=3e-3,
                                                adamw_betas=(0.9, 0.95), adamw_eps=1e-10, adamw_weight_decay=0.05)),
    "schedulefree_adamw": (plain(ScheduleFreeAdamW), schedulefree_reference(adam=True),
                           dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, warmup_steps=5, r=0.5,
                                weight_lr_power=2.0)),
    "schedulefree_sgd": (plain(ScheduleFreeSGD), schedulefree_reference(adam=False),
                         dict(lr=0.2, momentum=0.9, weight_decay=1e-3, warmup_steps=4, r=0.0, weight_lr_power=2.0)),
    "soap": (plain(SOAP, takes_foreach=False), soap_reference,
             dict(lr=3e-3, betas=(0.95, 0.95), eps=1e-8, weight_decay=0.01, precondition_frequency=5,
                  max_precond_dim=8)),  # full-rank factors only: eigenvectors of a null space are arbitrary
    "adopt": (plain(ADOPT), adopt_reference, dict(lr=3e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=1e-2,
                                                  decouple=False)),
    "adopt_decoupled": (plain(ADOPT), adopt_reference, dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                                            decouple=True)),
    "prodigy": (plain(Prodigy, takes_foreach=False), prodigy_reference,
                dict(lr=1.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, d0=1e-6)),
    "mars": (plain(MARS), mars_reference, dict(lr=3e-3, betas=(0.95, 0.99), eps=1e-8, weight_decay=0.1, gamma=0.025,
                                               lr_1d=6e-3, betas_1d=(0.9, 0.95), weight_decay_1d=0.1)),
    "mars_lion": (plain(MARS), mars_reference, dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0,
                                                    gamma=0.05, mars_type="mars-lion", lr_1d=3e-3, betas_1d=(0.9, 0.95),
                                                    weight_decay_1d=0.1)),
    "adan": (plain(Adan), adan_reference, dict(lr=1e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.02)),
    "lanton": (lanton_factory, lanton_reference, dict(lr=0.02, lr_output=0.002, lr_vector=0.004, betas=(0.95, 0.9),
                                                      eps=1e-8, weight_decay=0.1)),
}
# branches the reference must have taken
EXPECTED = {"muon": ("muon", "adamw"), "schedulefree_adamw": ("warmup", "constant"),
            "schedulefree_sgd": ("warmup", "constant"), "soap": ("refreshed", "identity"), "adopt": ("clipped",),
            "prodigy": ("grew",), "mars": ("mars", "adamw", "clipped"), "lanton": ("slowed",)}
# the per-tensor path in slices exists for element-wise rules
SLICED = ("schedulefree_adamw", "schedulefree_sgd", "adopt", "adopt_decoupled", "adan")
SINGLE_PATH = ("soap", "prodigy", "lanton")
SHARED_LR = ("prodigy",)  # one lr for all groups (the reference refuses others)


def compare(case: str, foreach: bool) -> dict:
    factory, reference, options = CASES[case]
    model, ref_model = make_net(), make_net()
    groups, hypers = groups_with(model, options)
    if case in SHARED_LR:
        groups[1]["lr"], hypers[1]["lr"] = options["lr"], options["lr"]
    optimizer = factory(groups, model, foreach, **options)
    ref_groups = [({**hyper, "base_lr": options["lr"]}, group["params"])
                  for hyper, group in zip(hypers, param_groups(ref_model, False))]
    states, counters, worst = {}, {}, 0.0
    for t, batch in enumerate(batches(STEPS), start=1):
        loss_of(model, batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_of(ref_model, batch).backward()
        reference(ref_groups, states, t, counters, ref_model)
        ref_model.zero_grad(set_to_none=True)
        worst = max(worst, max_difference(model, ref_model))
    return {"worst": worst, "optimizer": optimizer, "model": model, "ref_model": ref_model, "states": states,
            **counters}


def paths(case: str) -> tuple[str, ...]:
    if case in SINGLE_PATH:
        return ("single",)
    return ("foreach", "per_tensor", "sliced") if case in SLICED else ("foreach", "per_tensor")


@pytest.mark.parametrize("case, path", [(case, path) for case in sorted(CASES) for path in paths(case)])
def test_matches_reference(case, path, monkeypatch):
    if path == "sliced":  # slices of 7 float64s: several per tensor, a ragged last one
        monkeypatch.setattr(base, "SLICE_BYTES", 7 * 8)
    result = compare(case, foreach=path == "foreach")
    assert result["worst"] <= TOLERANCE, f"{case}: max |difference| {result['worst']:.3g} over {STEPS} steps"
    for key in EXPECTED.get(case, ()):
        assert result.get(key, 0) > 0, f"{case}: the test never took the '{key}' branch"


@pytest.mark.parametrize("case", ["schedulefree_adamw", "schedulefree_sgd"])
def test_schedulefree_eval_holds_the_average(case):
    """eval() puts x in the parameters, train() brings y back."""
    result = compare(case, foreach=True)
    optimizer, model, states = result["optimizer"], result["model"], result["states"]
    y = [p.detach().clone() for p in model.parameters()]
    optimizer.eval()
    averages = [states[q]["x"] for q in result["ref_model"].parameters()]
    assert max((p - x).abs().max().item() for p, x in zip(model.parameters(), averages)) < 1e-6
    optimizer.eval()  # idempotent
    optimizer.train()
    assert max((p - q).abs().max().item() for p, q in zip(model.parameters(), y)) < 1e-12
    optimizer.eval()
    with pytest.raises(RuntimeError, match="optimizer.train"):
        optimizer.step()


def test_prodigy_reports_its_estimate():
    result = compare("prodigy", foreach=True)
    d = result["optimizer"].metrics()["optimizer/d"]
    assert d.ndim == 0 and abs(d.item() - result["d"]) <= 1e-9 * result["d"] and result["d"] > CASES["prodigy"][2]["d0"]


def test_muon_routes_parameters_as_the_reference_advises():
    """auto: conv kernels and hidden linears to Muon; the output layer, embeddings, biases and norms to AdamW;
    a pattern list chooses the AdamW weights instead."""
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 6), nn.LayerNorm(6), nn.Linear(6, 3))
    routed = lambda opt: {id(p): g["use_muon"] for g in opt.param_groups for p in g["params"]}  # noqa: E731
    auto = routed(Muon(param_groups(model, False), model=model))
    expected = {id(model[0].weight): False, id(model[2].weight): True, id(model[2].bias): False,
                id(model[3].weight): False, id(model[3].bias): False, id(model[4].weight): False, id(model[4].bias): False}
    assert auto == expected
    chosen = routed(Muon(param_groups(model, False), model=model, adamw_params=["2.*"]))
    assert chosen[id(model[2].weight)] is False and chosen[id(model[4].weight)] is True and chosen[id(model[0].weight)]


def test_newton_schulz_is_orientation_free():
    """A tall matrix is orthogonalised as its transpose (the reference iterates on the wide orientation)."""
    torch.manual_seed(0)
    tall = torch.randn(9, 4, dtype=torch.float64)
    assert torch.allclose(orthogonalize(tall, 5, None), orthogonalize(tall.T, 5, None).T, atol=1e-12)
    assert torch.allclose(orthogonalize(tall, 5, None), newton_schulz(tall), atol=1e-12)
    singular = torch.linalg.svdvals(orthogonalize(tall, 5, None))
    assert singular.min() > 0.6 and singular.max() < 1.25  # near-orthogonal, as the reference states


# ---- state_dict round trip ------------------------------------------------------------------------------
ROUND_TRIP = sorted(set(CASES) - {"adopt_decoupled", "mars_lion"})


@pytest.mark.parametrize("case", ROUND_TRIP)
def test_state_dict_resume_is_bit_identical(case):
    """Saved after 9 steps (schedule-free: in eval mode, as the trainer saves it), loaded into a fresh optimizer,
    the next 7 steps equal an uninterrupted run's bit for bit."""
    factory, _, options = CASES[case]
    data = batches(16)
    schedule_free = case.startswith("schedulefree")

    def steps(model, optimizer, chunk):
        for batch in chunk:
            loss_of(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    model = make_net()
    optimizer = factory(param_groups(model, False), model, None, **options)
    steps(model, optimizer, data[:9])
    if schedule_free:
        optimizer.eval()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    if schedule_free:
        optimizer.train()
    steps(model, optimizer, data[9:])

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = make_net()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = factory(param_groups(resumed, False), resumed, None, **options)
    resumed_optimizer.load_state_dict(copy.deepcopy(saved["optimizer"]))
    if schedule_free:
        resumed_optimizer.train()
    steps(resumed, resumed_optimizer, data[9:])
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_new_optimizers_leave_gradients_alone():
    """The trainer logs gradient norms before step(); the references write p.grad (schedule-free, Muon's
    nesterov, Adan); these classes must not."""
    for case in sorted(CASES):
        factory, _, options = CASES[case]
        model = make_net()
        optimizer = factory(param_groups(model, False), model, True, **options)
        for batch in batches(3):
            loss_of(model, batch).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads)), case
            optimizer.zero_grad(set_to_none=True)


def test_declared_capabilities():
    from runner.optim import capabilities

    adaptive = {"muon.Muon": False, "lanton.LANTON": False, "schedulefree.ScheduleFreeSGD": False,
                "schedulefree.ScheduleFreeAdamW": True, "soap.SOAP": True, "adopt.ADOPT": True,
                "prodigy.Prodigy": True, "mars.MARS": True, "adan.Adan": True}
    for name, expected in adaptive.items():
        assert capabilities(f"runner.optim.{name}").adaptive is expected, name
    for cls in (Muon, LANTON, ScheduleFreeSGD, ScheduleFreeAdamW, SOAP, ADOPT, Prodigy, MARS, Adan):
        assert cls.second_order is False and cls.needs_closure is False


def test_no_decay_lr_scale_reaches_every_part():
    """The no-decay group's own lr scales Muon's AdamW part and LANTON's norm groups alike (checked above
    through the references; here: the groups carry it)."""
    model = make_net()
    groups, _ = groups_with(model, {"lr": 0.02})
    lrs = {(g["use_muon"], g["weight_decay"] == 0): g["lr"] for g in Muon(groups, model=model, adamw_lr=1e-3).param_groups}
    assert lrs[(False, True)] == pytest.approx(1e-3 * NO_DECAY_LR_SCALE)
