"""Stable-SPAM (Huang et al. 2025, "Stable-SPAM: How to Train in 4-Bit More Stably than 16-Bit Adam";
TianjinYellow/StableSPAM galore_torch/stablespam.py).

At step t (from 1), per tensor, after decoupled decay p *= 1 - lr*wd:
- AdaClip: M = theta*M + (1-theta)*max|g|, M_hat = M/(1-theta^k); entries with |g| > M_hat are scaled
  by M_hat/max|g|;
- AdaGN: n = ||g||, mu = g1*mu + (1-g1)*n, nu = g2*nu + (1-g2)*n^2 (bias-corrected with k), and
  g *= mu_hat / (sqrt(nu_hat) + eps) / n;
- momentum reset every `reset_interval` steps (official name update_proj_gap): the moments restart from
  zero and the step count k from 1 (k counts steps since the last reset; AdaClip and AdaGN keep their
  statistics);
- Adam with beta1*s and the bias corrections on k.
With `total_T` set, s = eta_min + (1-eta_min)(1 + cos(pi*t/(total_T+1)))/2 scales gamma1 and beta1 (the
official cosine); otherwise s = 1. In a reset step the official code zeroes the state but still updates
with the old moments (it holds references to them); this follows the paper's algorithm and SPAM's code:
the reset step's update starts from zero moments.
The clipped, normalised gradient is a copy: p.grad is never written.
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, slices, zeros_like


class StableSPAM(Optimizer):
    adaptive = True
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma1: float = 0.7, gamma2: float = 0.9, gamma3: float = 0.999,
                 total_T: int | None = None, eta_min: float = 0.5, reset_interval: int = 1000, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gamma1=gamma1,
                                      gamma2=gamma2, gamma3=gamma3, total_T=total_T, eta_min=eta_min,
                                      reset_interval=reset_interval), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)
        for key in ("max_avg", "norm_avg", "norm_sq_avg"):  # AdaClip's M, AdaGN's mu and nu
            state[key] = torch.zeros((), dtype=param.dtype, device=param.device)

    @staticmethod
    def plan(group: dict, step: int) -> tuple[float, int, bool, int]:
        """(s, the step count for AdaClip/AdaGN, reset now, the step count for Adam's bias correction)."""
        total, interval = group["total_T"], group["reset_interval"]
        scale = 1.0 if total is None else \
            group["eta_min"] + (1 - group["eta_min"]) * (1 + math.cos(math.pi * step / (total + 1))) / 2
        since = step if interval == 0 or step <= interval else step - interval * ((step - 1) // interval) + 1
        reset = interval > 0 and step % interval == 0
        return scale, since, reset, 1 if reset else since

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        theta, gamma2, eps = group["gamma3"], group["gamma2"], group["eps"]
        params, grads = bucket.params, bucket.grads
        scale, since, reset, adam_step = self.plan(group, bucket.step)
        gamma1 = group["gamma1"] * scale
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        # per-tensor statistics as vectors (one element per tensor), written back to the state at the end
        stats = {key: torch.stack(bucket.state_list(key)) for key in ("max_avg", "norm_avg", "norm_sq_avg")}
        # AdaClip: g += g * [|g| > M_hat] * (M_hat/max|g| - 1), the indicator as sign(max(|g| - M_hat, 0))
        max_abs = torch.stack(torch._foreach_norm(grads, math.inf))
        max_hat = stats["max_avg"].lerp_(max_abs, 1 - theta) / (1 - theta ** since)
        shrink = torch.where(max_abs > 0, max_hat / max_abs, 1.0) - 1
        spikes = torch._foreach_abs(grads)
        torch._foreach_sub_(spikes, list(max_hat.unbind()))
        torch._foreach_clamp_min_(spikes, 0.0)
        torch._foreach_sign_(spikes)
        torch._foreach_mul_(spikes, list(shrink.unbind()))
        grads = torch._foreach_addcmul(grads, grads, spikes)
        # AdaGN: rescale each tensor to its running norm
        norms = torch.stack(torch._foreach_norm(grads))
        target = stats["norm_avg"].lerp_(norms, 1 - gamma1) / (1 - gamma1 ** since)
        spread = stats["norm_sq_avg"].mul_(gamma2).addcmul_(norms, norms, value=1 - gamma2) / (1 - gamma2 ** since)
        factor = torch.where(norms > 0, target / (spread.sqrt() + eps) / norms, 1.0)
        torch._foreach_mul_(grads, list(factor.unbind()))
        for key, values in stats.items():
            torch._foreach_copy_(bucket.state_list(key), list(values.unbind()))
        # Adam
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        if reset:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        beta1 = beta1 * scale
        bc2_sqrt = math.sqrt(1 - beta2 ** adam_step)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        torch._foreach_addcdiv_(params, exp_avgs, denom, -group["lr"] * bc2_sqrt / (1 - beta1 ** adam_step))

    def update_tensor(self, group, param, grad, state, step):
        """The clipped gradient in one buffer (two reductions over it: max|g| and the norm), then Adam in
        cache-sized slices (runner.optim.base.slices), as the element-wise rules' per-tensor path."""
        beta1, beta2 = group["betas"]
        theta, gamma2, eps = group["gamma3"], group["gamma2"], group["eps"]
        scale, since, reset, adam_step = self.plan(group, step)
        gamma1 = group["gamma1"] * scale
        # AdaClip: g += g * [|g| > M_hat] * (M_hat/max|g| - 1), the indicator a float (bool masks: slow on CPUs)
        clipped = grad.abs()
        max_abs = clipped.amax()
        max_hat = state["max_avg"].lerp_(max_abs, 1 - theta) / (1 - theta ** since)
        shrink = torch.where(max_abs > 0, max_hat / max_abs, 1.0) - 1
        torch.gt(clipped, max_hat, out=clipped).mul_(shrink)
        torch.addcmul(grad, grad, clipped, out=clipped)
        # AdaGN: rescale to the running norm
        norm = torch.linalg.vector_norm(clipped)
        state["norm_avg"].lerp_(norm, 1 - gamma1)
        state["norm_sq_avg"].mul_(gamma2).addcmul_(norm, norm, value=1 - gamma2)
        target = state["norm_avg"] / (1 - gamma1 ** since) / ((state["norm_sq_avg"] / (1 - gamma2 ** since)).sqrt() + eps)
        factor = torch.where(norm > 0, target / norm, 1.0)
        # Adam
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if reset:
            exp_avg.zero_()
            exp_avg_sq.zero_()
        beta1 = beta1 * scale
        bc2_sqrt = math.sqrt(1 - beta2 ** adam_step)
        step_size = group["lr"] * bc2_sqrt / (1 - beta1 ** adam_step)
        decay = 1 - group["lr"] * group["weight_decay"]
        for g, p, m, v in slices(clipped, param, exp_avg, exp_avg_sq):
            g.mul_(factor)
            if decay != 1:
                p.mul_(decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().add_(eps * bc2_sqrt), value=-step_size)
