"""Each optimizer against an independent per-parameter reference written here from its paper's equations
(plain loops over parameters; nothing from runner.optim but the param-group split), over 24 steps of a
float64 net with conv, linear, bias, BatchNorm and 1-element parameters, two param groups (the no-decay
group with its own lr), on the foreach path, the per-tensor path and (rules that update in slices) the
per-tensor path in slices. Also: branches the tests rely on were taken, and a state_dict saved mid-run
continues bit-identically."""
from __future__ import annotations

import copy
import io
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from runner.optim import base, param_groups
from runner.optim.adabelief import AdaBelief
from runner.optim.adagrad_norm import AdaGradNorm
from runner.optim.adahessian import AdaHessian
from runner.optim.adamp import AdamP
from runner.optim.diffgrad import DiffGrad
from runner.optim.lion import Lion
from runner.optim.sam import SAM
from runner.optim.sgd_sai import SGDSaI
from runner.optim.sgdp import SGDP
from runner.optim.spam import SPAM
from runner.optim.stable_spam import StableSPAM

STEPS = 20
TOLERANCE = 1e-6
NO_DECAY_LR_SCALE = 0.5


class Net(nn.Module):
    """conv - BN - ReLU - conv - BN - ReLU - pool - linear (bias), times a learned 1-element temperature.
    (A conv bias before BatchNorm would get a pure rounding-noise gradient, whose sign Lion follows.)"""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                                      nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 5)
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return self.head(self.features(x)) * self.temperature


def make_net() -> Net:
    torch.manual_seed(0)
    return Net().double()


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 3, 6, 6, generator=generator, dtype=torch.float64),
             torch.randint(0, 5, (16,), generator=generator)) for _ in range(count)]


def loss_of(model: nn.Module, batch) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def groups_with(model: nn.Module, options: dict) -> tuple[list[dict], list[dict]]:
    """divrun's split (decay group, no-decay group) with the no-decay group on its own lr, and the
    hyper-parameters each group's reference sees."""
    groups = param_groups(model, decay_bias_and_norm=False)
    groups[1]["lr"] = options["lr"] * NO_DECAY_LR_SCALE
    hypers = [dict(options), {**options, "weight_decay": 0.0, "lr": options["lr"] * NO_DECAY_LR_SCALE}]
    return groups, hypers


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def compare(optimizer_class, reference, options: dict, foreach: bool, second_order: bool = False) -> dict:
    """Train two copies of the net on the same batches, one with the optimizer, one with `reference`;
    return the worst parameter difference and the reference's counters."""
    model, ref_model = make_net(), make_net()
    groups, hypers = groups_with(model, options)
    optimizer = optimizer_class(groups, **options, foreach=foreach)
    ref_groups = [(hyper, group["params"]) for hyper, group in zip(hypers, param_groups(ref_model, False))]
    states, counters, worst = {}, {}, 0.0
    for t, batch in enumerate(batches(STEPS), start=1):
        loss_of(model, batch).backward(create_graph=second_order)
        rng = torch.get_rng_state()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)  # the reference draws the same random numbers (AdaHessian's probes)
        loss_of(ref_model, batch).backward(create_graph=second_order)
        reference(ref_groups, states, t, counters)
        ref_model.zero_grad(set_to_none=True)
        worst = max(worst, max_difference(model, ref_model))
    return {"worst": worst, **counters}


def count(counters: dict, key: str, amount: int = 1) -> None:
    counters[key] = counters.get(key, 0) + amount


# ---- references, from the papers' equations -----------------------------------------------------------
@torch.no_grad()
def lion_reference(groups, states, t, counters):
    for h, params in groups:
        b1, b2 = h["betas"]
        for p in params:
            g, st = p.grad, states.setdefault(p, {"m": torch.zeros_like(p)})
            c = b1 * st["m"] + (1 - b1) * g
            p.copy_(p - h["lr"] * (torch.sign(c) + h["weight_decay"] * p))
            st["m"] = b2 * st["m"] + (1 - b2) * g


def radial_projection(p, g, u, h, counters):
    """AdamP's projection, per view: the channel view (rows = output channels) first, then the layer."""
    for view, name in ((lambda x: x.reshape(x.shape[0], -1), "channel"), (lambda x: x.reshape(1, -1), "layer")):
        pv, gv, uv = view(p), view(g), view(u)
        cosines = (gv * pv).sum(1).abs() / (gv.norm(dim=1).clamp_min(h["eps"]) * pv.norm(dim=1).clamp_min(h["eps"]))
        if cosines.max().item() < h["delta"] / math.sqrt(pv.shape[1]):
            units = pv / (pv.norm(dim=1, keepdim=True) + h["eps"])
            count(counters, name)
            return (uv - units * (units * uv).sum(1, keepdim=True)).reshape(p.shape), h["wd_ratio"]
    count(counters, "unprojected")
    return u, 1.0


@torch.no_grad()
def adamp_reference(groups, states, t, counters):
    for h, params in groups:
        b1, b2 = h["betas"]
        for p in params:
            g = p.grad
            st = states.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            denom = st["v"].sqrt() / math.sqrt(1 - b2 ** t) + h["eps"]
            u = ((b1 * st["m"] + (1 - b1) * g) if h["nesterov"] else st["m"]) / denom
            ratio = 1.0
            if p.ndim > 1:
                u, ratio = radial_projection(p, g, u, h, counters)
            p.copy_(p * (1 - h["lr"] * h["weight_decay"] * ratio) - h["lr"] / (1 - b1 ** t) * u)


@torch.no_grad()
def sgdp_reference(groups, states, t, counters):
    for h, params in groups:
        mu = h["momentum"]
        for p in params:
            g, st = p.grad, states.setdefault(p, {"buf": torch.zeros_like(p)})
            st["buf"] = mu * st["buf"] + (1 - h["dampening"]) * g
            d = g + mu * st["buf"] if h["nesterov"] else st["buf"]
            ratio = 1.0
            if p.ndim > 1:
                d, ratio = radial_projection(p, g, d, h, counters)
                if not h["nesterov"]:
                    st["buf"] = d  # the official code projects the buffer itself (d is the buffer)
            p.copy_(p * (1 - h["lr"] * h["weight_decay"] * ratio / (1 - mu)) - h["lr"] * d)


@torch.no_grad()
def adabelief_reference(groups, states, t, counters):
    for h, params in groups:
        b1, b2 = h["betas"]
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        for p in params:
            g = p.grad
            st = states.setdefault(p, {"m": torch.zeros_like(p), "s": torch.zeros_like(p)})
            if h["weight_decouple"]:
                p.copy_(p * (1 - h["lr"] * h["weight_decay"]))
            else:
                g = g + h["weight_decay"] * p
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["s"] = b2 * st["s"] + (1 - b2) * (g - st["m"]) ** 2 + h["eps"]
            m_hat = st["m"] / (1 - b1 ** t)
            if not h["rectify"]:
                p.copy_(p - h["lr"] * m_hat / (st["s"].sqrt() / math.sqrt(1 - b2 ** t) + h["eps"]))
            elif rho_t >= 5:
                r = math.sqrt((1 - b2 ** t) * (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                p.copy_(p - h["lr"] * r * m_hat / (st["s"].sqrt() + h["eps"]))
                count(counters, "rectified")
            elif h["degenerated_to_sgd"]:
                p.copy_(p - h["lr"] * m_hat)
                count(counters, "sgd")


@torch.no_grad()
def diffgrad_reference(groups, states, t, counters):
    for h, params in groups:
        b1, b2 = h["betas"]
        for p in params:
            g = p.grad + h["weight_decay"] * p
            st = states.setdefault(p, {k: torch.zeros_like(p) for k in ("m", "v", "previous")})
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            xi = 1 / (1 + torch.exp(-(st["previous"] - g).abs()))
            st["previous"] = g.clone()
            m_hat, v_hat = st["m"] / (1 - b1 ** t), st["v"] / (1 - b2 ** t)
            p.copy_(p - h["lr"] * xi * m_hat / (v_hat.sqrt() + h["eps"] / math.sqrt(1 - b2 ** t)))


@torch.no_grad()
def sgd_sai_reference(groups, states, t, counters):
    for h, params in groups:
        for p in params:
            g = p.grad
            if t == 1:
                n = g.numel()
                std = math.sqrt(((g - g.mean()) ** 2).sum().item() / (n - 1)) if n > 1 else 0.0  # NaN -> 0
                states[p] = {"gsnr": g.norm().item() / (std + h["eps"]), "buf": g.clone()}
                count(counters, "one_element", int(n == 1))
            else:
                states[p]["buf"] = h["momentum"] * states[p]["buf"] + (1 - h["momentum"]) * g
            st = states[p]
            p.copy_(p * (1 - h["lr"] * h["weight_decay"]) - h["lr"] * st["gsnr"] * st["buf"])


@torch.no_grad()
def spam_reference(groups, states, t, counters):
    """SPAM with the official bookkeeping simulated: total_step and current_step counters."""
    for h, params in groups:
        b1, b2 = h["betas"]
        period, delay, warmup, threshold = h["reset_interval"], h["grad_accu_steps"], h["warmup_steps"], h["threshold"]
        clock = states.setdefault(("clock", id(h)), {"total": 0, "current": warmup + 1})
        c = clock["current"]
        scale = 1.0 if c >= warmup else 1 - 0.99 * (1 + math.cos(math.pi * c / (warmup + 1))) / 2
        for p in params:
            g = p.grad.clone()
            st = states.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
            if (clock["total"] + 1) % period == 0:
                st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                count(counters, "resets")
            now = clock["total"] + 1
            if now >= delay and now % period >= delay:
                spikes = g ** 2 > threshold * st["v"]
                g[spikes] = g[spikes].sign() * (threshold * st["v"][spikes]).sqrt()
                count(counters, "clipped", int(spikes.sum()))
            st["m"] = b1 * st["m"] + (1 - b1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            step_size = h["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p.copy_(p - step_size * scale * st["m"] / (st["v"].sqrt() + h["eps"]))
            p.copy_(p * (1 - h["lr"] * h["weight_decay"]))
        clock["total"] += 1
        clock["current"] += 1
        if (clock["total"] + 1) % period == 0:
            clock["current"] = 0


@torch.no_grad()
def stable_spam_reference(groups, states, t, counters):
    for h, params in groups:
        b1, b2 = h["betas"]
        theta, gap, eps = h["gamma3"], h["reset_interval"], h["eps"]
        scale = 1.0 if h["total_T"] is None else \
            h["eta_min"] + (1 - h["eta_min"]) * (1 + math.cos(math.pi * t / (h["total_T"] + 1))) / 2
        gamma1 = h["gamma1"] * scale
        for p in params:
            st = states.setdefault(p, {"k": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p),
                                       "max": 0.0, "mu": 0.0, "nu": 0.0})
            p.copy_(p * (1 - h["lr"] * h["weight_decay"]))
            g = p.grad.clone()
            st["k"] += 1
            k = st["k"]
            largest = g.abs().max().item()
            st["max"] = theta * st["max"] + (1 - theta) * largest
            max_hat = st["max"] / (1 - theta ** k)
            spikes = g.abs() > max_hat
            g[spikes] = g[spikes] / largest * max_hat
            count(counters, "clipped", int(spikes.sum()))
            norm = g.norm().item()
            st["mu"] = gamma1 * st["mu"] + (1 - gamma1) * norm
            st["nu"] = h["gamma2"] * st["nu"] + (1 - h["gamma2"]) * norm ** 2
            target = (st["mu"] / (1 - gamma1 ** k)) / (math.sqrt(st["nu"] / (1 - h["gamma2"] ** k)) + eps)
            if norm > 0:
                g = g / norm * target
            if gap and t % gap == 0:
                st["m"], st["v"], st["k"] = torch.zeros_like(p), torch.zeros_like(p), 1
                count(counters, "resets")
            k, beta1 = st["k"], b1 * scale
            st["m"] = beta1 * st["m"] + (1 - beta1) * g
            st["v"] = b2 * st["v"] + (1 - b2) * g * g
            p.copy_(p - h["lr"] / (1 - beta1 ** k) * st["m"] / (st["v"].sqrt() / math.sqrt(1 - b2 ** k) + eps))


@torch.no_grad()
def adagrad_norm_reference(groups, states, t, counters):
    """b^2 += ||g + wd p||^2 over the whole model (one scalar); p -= lr (g + wd p) / (b + eps)."""
    grads = {p: p.grad + h["weight_decay"] * p for h, params in groups for p in params}
    initial = groups[0][0]["initial_accumulator_value"]
    states["b2"] = states.get("b2", initial) + sum((g * g).sum() for g in grads.values())
    for h, params in groups:
        for p in params:
            p.copy_(p - h["lr"] * grads[p] / (states["b2"].sqrt() + h["eps"]))


def adahessian_reference(groups, states, t, counters):
    """Hutchinson: z Rademacher (one flat draw over all parameters, in order), D = |z * Hz|, averaged over
    the spatial window of conv kernels."""
    params = [p for _, group_params in groups for p in group_params]
    grads = [p.grad for p in params]
    z_flat = torch.randint(0, 2, (sum(p.numel() for p in params),)).double() * 2 - 1
    zs, start = [], 0
    for p in params:
        zs.append(z_flat[start:start + p.numel()].reshape(p.shape))
        start += p.numel()
    count(counters, "minus_ones", int((z_flat == -1).sum()))
    count(counters, "plus_ones", int((z_flat == 1).sum()))
    hzs = torch.autograd.grad(grads, params, grad_outputs=zs)
    with torch.no_grad():
        diagonals = {}
        for p, z, hz in zip(params, zs, hzs):
            d = (z * hz).abs()
            diagonals[p] = d.mean(dim=(2, 3), keepdim=True).expand_as(d) if p.ndim == 4 else d
        for h, group_params in groups:
            b1, b2 = h["betas"]
            for p in group_params:
                st = states.setdefault(p, {"m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                st["m"] = b1 * st["m"] + (1 - b1) * p.grad.detach()
                st["v"] = b2 * st["v"] + (1 - b2) * diagonals[p] ** 2
                denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** t)) ** h["hessian_power"] + h["eps"]
                p.copy_(p - h["lr"] * (st["m"] / (1 - b1 ** t) / denom + h["weight_decay"] * p))


# ---- the comparisons ---------------------------------------------------------------------------------
CASES = {
    "lion": (Lion, lion_reference, dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.5)),
    "adamp": (AdamP, adamp_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1, delta=0.1,
                                           wd_ratio=0.1, nesterov=False)),
    "adamp_nesterov": (AdamP, adamp_reference, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1,
                                                    delta=0.1, wd_ratio=0.2, nesterov=True)),
    "sgdp": (SGDP, sgdp_reference, dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=1e-3, nesterov=False,
                                        eps=1e-8, delta=0.1, wd_ratio=0.1)),
    "sgdp_nesterov": (SGDP, sgdp_reference, dict(lr=0.05, momentum=0.8, dampening=0.1, weight_decay=1e-3,
                                                 nesterov=True, eps=1e-8, delta=0.1, wd_ratio=0.1)),
    "adabelief": (AdaBelief, adabelief_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.1,
                                                       weight_decouple=True, rectify=True, degenerated_to_sgd=True)),
    "adabelief_cifar": (AdaBelief, adabelief_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                                             weight_decay=5e-3, weight_decouple=False, rectify=False,
                                                             degenerated_to_sgd=True)),
    "adabelief_no_sgd": (AdaBelief, adabelief_reference, dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-12,
                                                              weight_decay=0.0, weight_decouple=True, rectify=True,
                                                              degenerated_to_sgd=False)),
    "diffgrad": (DiffGrad, diffgrad_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)),
    "sgd_sai": (SGDSaI, sgd_sai_reference, dict(lr=1e-3, momentum=0.9, eps=1e-8, weight_decay=1e-2)),
    "spam": (SPAM, spam_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.1, correct_bias=True,
                                        warmup_steps=4, threshold=1.5, reset_interval=7, grad_accu_steps=2)),
    "stable_spam": (StableSPAM, stable_spam_reference, dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1,
                                                            gamma1=0.7, gamma2=0.9, gamma3=0.9, total_T=30,
                                                            eta_min=0.5, reset_interval=9)),
    "adagrad_norm": (AdaGradNorm, adagrad_norm_reference, dict(lr=0.3, initial_accumulator_value=0.05, eps=1e-10,
                                                               weight_decay=0.1)),
    "adahessian": (AdaHessian, adahessian_reference, dict(lr=0.05, betas=(0.9, 0.999), eps=1e-4, weight_decay=1e-2,
                                                           hessian_power=1.0)),
    "adahessian_power": (AdaHessian, adahessian_reference, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-4,
                                                                 weight_decay=0.0, hessian_power=0.5)),
}
# branches each case must have taken, so that a test can fail on them
EXPECTED = {"adamp": ("channel", "unprojected"), "sgdp": ("channel", "unprojected"),
            "adabelief": ("rectified", "sgd"), "adabelief_no_sgd": ("rectified",), "sgd_sai": ("one_element",),
            "spam": ("resets", "clipped"), "stable_spam": ("resets", "clipped"),
            "adahessian": ("minus_ones", "plus_ones")}


def paths(case: str) -> tuple[str, ...]:
    sliced = CASES[case][0].elementwise or CASES[case][0] is StableSPAM  # Stable-SPAM slices its own Adam part
    return ("foreach", "per_tensor", "sliced") if sliced else ("foreach", "per_tensor")


@pytest.mark.parametrize("case, path", [(case, path) for case in sorted(CASES) for path in paths(case)])
def test_matches_reference(case, path, monkeypatch):
    optimizer_class, reference, options = CASES[case]
    if path == "sliced":  # the per-tensor path in slices of 7 float64s: several per tensor, a ragged last one
        monkeypatch.setattr(base, "SLICE_BYTES", 7 * 8)
    foreach = path == "foreach"
    result = compare(optimizer_class, reference, options, foreach, second_order=optimizer_class.second_order)
    assert result["worst"] <= TOLERANCE, f"{case}: max |difference| {result['worst']:.3g} over {STEPS} steps"
    for key in EXPECTED.get(case, ()):
        assert result.get(key, 0) > 0, f"{case}: the test never took the '{key}' branch"


def test_slices_are_views_of_the_tensors(monkeypatch):
    monkeypatch.setattr(base, "SLICE_BYTES", 7 * 8)
    weight, state = torch.zeros(6, 3, 3, 3, dtype=torch.float64), torch.zeros(6, 3, 3, 3, dtype=torch.float64)
    pieces = base.slices(weight, state)
    assert [len(w) for w, _ in pieces] == [7] * 23 + [1]
    for w, s in pieces:
        w.add_(1.0)
        s.add_(2.0)
    assert torch.equal(weight, torch.ones_like(weight)) and torch.equal(state, torch.full_like(state, 2.0))
    assert len(base.slices(weight.transpose(0, 1), state)) == 1  # not contiguous: whole tensors


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_matches_reference(adaptive):
    """SAM / ASAM around torch's SGD: ascend to w + rho*T^2 g/||T g||, gradient there, SGD step from w."""
    rho, eta = (0.5, 0.01) if adaptive else (0.05, 0.0)
    model, ref_model = make_net(), make_net()
    base = partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-3)
    optimizer = SAM(base(param_groups(model, False)), rho=rho, adaptive=adaptive, eta=eta)
    ref_params = list(ref_model.parameters())
    ref_base = base(param_groups(ref_model, False))
    worst = 0.0
    for batch in batches(STEPS):
        loss_of(model, batch).backward()
        optimizer.step(lambda: loss_of(model, batch).backward())
        optimizer.zero_grad(set_to_none=True)

        loss_of(ref_model, batch).backward()
        with torch.no_grad():
            scales = [p.abs() + eta if adaptive else torch.ones_like(p) for p in ref_params]
            norm = math.sqrt(sum(((s * p.grad) ** 2).sum().item() for s, p in zip(scales, ref_params)))
            saved = [p.clone() for p in ref_params]
            for s, p in zip(scales, ref_params):
                p.add_(rho * s * s * p.grad / (norm + 1e-12))
        ref_model.zero_grad(set_to_none=True)
        loss_of(ref_model, batch).backward()
        with torch.no_grad():
            for p, w in zip(ref_params, saved):
                p.copy_(w)
        ref_base.step()
        ref_base.zero_grad(set_to_none=True)
        worst = max(worst, max_difference(model, ref_model))
    assert worst <= TOLERANCE


def test_adamp_layer_view_projection():
    """A weight whose channel test fails (one row aligned with its gradient) but whose layer test passes
    (the total <g, p> is zero) is projected over the whole layer: the update loses its component along p."""
    torch.manual_seed(0)
    for foreach in (True, False):
        weight = nn.Parameter(torch.randn(4, 25, dtype=torch.float64))
        g = torch.randn(4, 25, dtype=torch.float64)
        g -= weight.detach() * (g * weight.detach()).sum() / weight.detach().pow(2).sum()
        g[0] += 0.5 * weight.detach()[0]
        g[1] -= 0.5 * weight.detach()[1] * weight.detach()[0].pow(2).sum() / weight.detach()[1].pow(2).sum()
        weight.grad = g
        before = weight.detach().clone()
        AdamP([weight], lr=0.1, weight_decay=0.0, foreach=foreach).step()
        update = (weight.detach() - before).flatten()
        unit = before.flatten() / before.norm()
        assert abs(torch.dot(update, unit).item()) < 1e-7 * update.norm().item()  # p_n = p / (||p|| + eps)
        rows = [abs(torch.dot(update.view(4, 25)[r], before[r]).item()) for r in range(4)]
        assert max(rows) > 1e-6  # rows keep radial parts: the projection was the layer's, not the channels'


# ---- state_dict round trip ---------------------------------------------------------------------------
ROUND_TRIP = {name: CASES[name] for name in ("lion", "adamp", "sgdp", "adabelief", "diffgrad", "sgd_sai", "spam",
                                             "stable_spam", "adahessian", "adagrad_norm")}


def train_steps(model, optimizer, steps, second_order=False, closure=False):
    for batch in steps:
        loss_of(model, batch).backward(create_graph=second_order)
        optimizer.step((lambda: loss_of(model, batch).backward()) if closure else None)
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("case", sorted(ROUND_TRIP) + ["sam"])
def test_state_dict_resume_is_bit_identical(case):
    if case == "sam":
        build = lambda groups: SAM(AdaBelief(groups, lr=1e-2), rho=0.05)  # noqa: E731
        second_order, closure = False, True
    else:
        optimizer_class, _, options = ROUND_TRIP[case]
        build = lambda groups: optimizer_class(groups, **options)  # noqa: E731
        second_order, closure = optimizer_class.second_order, False
    data = batches(16)
    model = make_net()
    optimizer = build(param_groups(model, False))
    train_steps(model, optimizer, data[:9], second_order, closure)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, buffer)
    train_steps(model, optimizer, data[9:], second_order, closure)

    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = make_net()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = build(param_groups(resumed, False))
    resumed_optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    train_steps(resumed, resumed_optimizer, data[9:], second_order, closure)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_optimizers_leave_gradients_alone():
    """The trainer logs gradient norms before step(); the clipping optimizers must not write p.grad either."""
    for optimizer_class, options in ((SPAM, CASES["spam"][2]), (StableSPAM, CASES["stable_spam"][2]),
                                     (AdaGradNorm, CASES["adagrad_norm"][2])):
        model = make_net()
        optimizer = optimizer_class(param_groups(model, False), **options)
        for batch in batches(12):
            loss_of(model, batch).backward()
            grads = [p.grad.clone() for p in model.parameters()]
            optimizer.step()
            assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
            optimizer.zero_grad(set_to_none=True)


def test_adahessian_needs_the_gradient_graph():
    model = make_net()
    optimizer = AdaHessian(model.parameters())
    loss_of(model, batches(1)[0]).backward()
    with pytest.raises(RuntimeError, match="create_graph=True"):
        optimizer.step()
