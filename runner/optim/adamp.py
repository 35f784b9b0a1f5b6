"""AdamP (Heo et al. 2021, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
Weights"; clovaai/AdamP adamp/adamp.py) and the radial projection it shares with SGDP.

For a weight with >= 2 dims whose raw gradient is nearly orthogonal to it (|cos(g, p)| below
delta/sqrt(dim), tested per output channel first, then for the whole layer), the weight is taken to be
scale-invariant: the update loses its radial component, u -= p_n <p_n, u> with p_n = p / (||p|| + eps),
over the same view, and weight decay is scaled by wd_ratio. Decay is decoupled and scaled by lr:
p *= 1 - lr * wd * wd_ratio. The tests run without a host sync: both views are evaluated and selected
on the device.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


# ---- the projection ----------------------------------------------------------------------------------
def _cosine(dot: torch.Tensor, sq_norm_a: torch.Tensor, sq_norm_b: torch.Tensor, eps: float) -> torch.Tensor:
    """|cos| as torch.nn.functional.cosine_similarity computes it: each norm clamped below at eps."""
    return dot.abs() / (sq_norm_a.sqrt().clamp_min(eps) * sq_norm_b.sqrt().clamp_min(eps))


def project_tensor(param, grad, update, delta: float, wd_ratio: float, eps: float):
    """One weight: project `update` in place; return the weight-decay multiplier (a 0-d tensor)."""
    dims = tuple(range(1, param.ndim))
    channel = [(a * b).sum(dims) for a, b in ((grad, param), (grad, grad), (param, param), (param, update))]
    layer = [x.sum() for x in channel]
    by_channel = _cosine(*channel[:3], eps).max() < delta / math.sqrt(param[0].numel())
    by_layer = ~by_channel & (_cosine(*layer[:3], eps) < delta / math.sqrt(param.numel()))
    channel_coef = channel[3] / (channel[2].sqrt() + eps) ** 2
    layer_coef = layer[3] / (layer[2].sqrt() + eps) ** 2
    coef = torch.where(by_channel, channel_coef, torch.where(by_layer, layer_coef, 0.0))
    update.addcmul_(param, coef.view(-1, *[1] * len(dims)), value=-1)
    return torch.where(by_channel | by_layer, wd_ratio, 1.0).to(param.dtype)


@lru_cache(maxsize=256)
def _segments(shapes: tuple[torch.Size, ...], device: torch.device):
    """Per-weight constants of a list of shapes: output channels, 1/sqrt(channel size), 1/sqrt(size)."""
    channels = torch.tensor([s[0] for s in shapes], device=device)
    inv_sqrt_channel = torch.tensor([1 / math.sqrt(math.prod(s[1:])) for s in shapes], device=device)
    inv_sqrt_layer = torch.tensor([1 / math.sqrt(math.prod(s)) for s in shapes], device=device)
    return channels, inv_sqrt_channel, inv_sqrt_layer


def project_foreach(params, grads, updates, delta: float, wd_ratio: float, eps: float) -> torch.Tensor:
    """Many weights: per-channel sums per tensor, then every test and coefficient batched over all channels
    of all weights; project `updates` in place and return the weight-decay multipliers (one per weight)."""
    shapes = tuple(p.shape for p in params)
    channels, inv_sqrt_channel, inv_sqrt_layer = _segments(shapes, params[0].device)
    sums = [[] for _ in range(4)]  # <g,p>, <g,g>, <p,p>, <p,u> per output channel
    for p, g, u in zip(params, grads, updates):
        dims = tuple(range(1, p.ndim))
        for out, (a, b) in zip(sums, ((g, p), (g, g), (p, p), (p, u))):
            out.append((a * b).sum(dims))
    channel = [torch.cat(s) for s in sums]
    rows = channel[0].numel()
    layer = [torch.segment_reduce(x, "sum", lengths=channels) for x in channel]
    channel_max = torch.segment_reduce(_cosine(*channel[:3], eps), "max", lengths=channels)
    by_channel = channel_max < delta * inv_sqrt_channel
    by_layer = ~by_channel & (_cosine(*layer[:3], eps) < delta * inv_sqrt_layer)
    channel_coef = channel[3] / (channel[2].sqrt() + eps) ** 2
    layer_coef = (layer[3] / (layer[2].sqrt() + eps) ** 2).repeat_interleave(channels, output_size=rows)
    per_row = lambda x: x.repeat_interleave(channels, output_size=rows)  # noqa: E731
    coef = torch.where(per_row(by_channel), channel_coef, torch.where(per_row(by_layer), layer_coef, 0.0))
    coefs = [c.view(-1, *[1] * (p.ndim - 1)) for c, p in zip(coef.split([s[0] for s in shapes]), params)]
    torch._foreach_addcmul_(updates, params, coefs, value=-1)
    return torch.where(by_channel | by_layer, wd_ratio, 1.0).to(params[0].dtype)


def projected_step_foreach(group: dict, params, grads, updates, decay: float, step_size: float) -> None:
    """p *= 1 - decay * (wd_ratio where projected); p -= step_size * u, projecting the >= 2-D weights' u."""
    weights = [i for i, p in enumerate(params) if p.ndim > 1]
    others = [i for i, p in enumerate(params) if p.ndim <= 1]
    if weights:
        pick = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
        ratios = project_foreach(pick(params, weights), pick(grads, weights), pick(updates, weights),
                                 group["delta"], group["wd_ratio"], group["eps"])
        if decay != 0:
            torch._foreach_mul_(pick(params, weights), list((1 - decay * ratios).unbind()))
    if others and decay != 0:
        torch._foreach_mul_([params[i] for i in others], 1 - decay)
    torch._foreach_add_(params, updates, alpha=-step_size)


def projected_step_tensor(group: dict, param, grad, update, decay: float, step_size: float) -> None:
    ratio = project_tensor(param, grad, update, group["delta"], group["wd_ratio"], group["eps"]) \
        if param.ndim > 1 else 1.0
    if decay != 0:
        param.mul_(1 - decay * ratio)
    param.add_(update, alpha=-step_size)


# ---- AdamP -------------------------------------------------------------------------------------------
class AdamP(Optimizer):
    adaptive = True
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1, nesterov: bool = False,
                 foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)

    @staticmethod
    def constants(group: dict, step: int) -> tuple[float, float]:
        """(step size, eps) with the bias corrections folded in:
        lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) = lr*sqrt(bc2)/bc1 * m / (sqrt(v) + eps*sqrt(bc2))."""
        beta1, beta2 = group["betas"]
        bc2_sqrt = math.sqrt(1 - beta2 ** step)
        return group["lr"] * bc2_sqrt / (1 - beta1 ** step), group["eps"] * bc2_sqrt

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        step_size, eps = self.constants(group, bucket.step)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps)
        numerator = torch._foreach_lerp(exp_avgs, grads, 1 - beta1) if group["nesterov"] else exp_avgs
        updates = torch._foreach_div(numerator, denom)
        projected_step_foreach(group, params, grads, updates, group["lr"] * group["weight_decay"], step_size)

    def update_tensor(self, group, param, grad, state, step):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        step_size, eps = self.constants(group, step)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        numerator = exp_avg.lerp(grad, 1 - beta1) if group["nesterov"] else exp_avg
        update = numerator / (exp_avg_sq.sqrt() + eps)
        projected_step_tensor(group, param, grad, update, group["lr"] * group["weight_decay"], step_size)
