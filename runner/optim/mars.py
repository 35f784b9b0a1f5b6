"""MARS (Yuan et al. 2024, "MARS: Unleashing the Power of Variance Reduction for Training Large Models";
AGI-Arena/MARS MARS/optimizers/mars.py, the approximate form `is_approx=True` the paper trains with).

For 2-D weights (the official test is `grad.ndim == 2`; `optimize_1d=True` extends the rule to every tensor):
    c = g + gamma * b1/(1-b1) * (g - g_prev);   c /= max(1, ||c||_2)     (per tensor)
    m = b1*m + (1-b1)*c
    mars-adamw: v = b2*v + (1-b2)*c^2;  p -= lr * (wd*p + m / ((sqrt(v)/sqrt(bc2) + eps) * bc1))
    mars-lion:  p -= lr * (wd*p + sign(m))
with g_prev the previous step's gradient (0 at step 1) and bc_i = 1 - b_i^t. Every other tensor (conv kernels,
biases, norms) takes AdamW with `betas_1d`, lr * lr_1d/lr and decay `weight_decay_1d`: the official code applies
weight_decay_1d to all of them; here it applies to the tensors of decayed param groups only (divrun's no-decay
group stays undecayed). Decay is decoupled and scaled by lr. Official defaults: lr 3e-3, betas (0.95, 0.99),
eps 1e-8, weight_decay 0, gamma 0.025, mars_type mars-adamw, optimize_1d false, lr_1d 3e-3, betas_1d (0.9, 0.95),
weight_decay_1d 0.1. The official clip `if ||c|| > 1` is a host sync; here it is a division by max(1, ||c||) on
the device. mars-shampoo (Newton-Schulz on m) is not provided; use optimizer=muon for that geometry.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like

MARS_TYPES = ("mars-adamw", "mars-lion")


class MARS(Optimizer):
    adaptive = True  # mars-adamw (the default); mars-lion is sign-based, also per-coordinate normalised
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, gamma: float = 0.025,
                 mars_type: Literal["mars-adamw", "mars-lion"] = "mars-adamw",
                 optimize_1d: bool = False, lr_1d: float = 3e-3, betas_1d: tuple[float, float] = (0.9, 0.95),
                 weight_decay_1d: float = 0.1, foreach: bool | None = None):
        if mars_type not in MARS_TYPES:
            raise ValueError(f"mars_type={mars_type}: choose one of {', '.join(MARS_TYPES)}")
        if lr <= 0 or not all(0 <= b < 1 for b in (*betas, *betas_1d)):
            raise ValueError(f"MARS: need lr > 0 and betas in [0, 1) (got {lr}, {betas}, {betas_1d})")
        groups = list(params)
        groups = [{"params": groups}] if not groups or not isinstance(groups[0], dict) else groups
        # weight_decay_1d applies to the tensors of every group but divrun's no-decay one (weight_decay 0)
        groups = [{**g, "decay_1d": "weight_decay" not in g or g["weight_decay"] != 0} for g in groups]
        super().__init__(groups, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gamma=gamma,
                                      mars_type=mars_type, optimize_1d=optimize_1d, lr_1d_factor=lr_1d / lr,
                                      betas_1d=tuple(betas_1d), weight_decay_1d=weight_decay_1d), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)
        if group["optimize_1d"] or param.ndim == 2:
            state["last_grad"] = zeros_like(param)

    def buckets(self, group, params):
        """Buckets split further into MARS tensors and AdamW tensors (they take different rules)."""
        split = []
        for bucket in super().buckets(group, params):
            for is_mars in (True, False):
                chosen = [i for i, s in enumerate(bucket.states) if ("last_grad" in s) == is_mars]
                if chosen:
                    split.append(Bucket([bucket.params[i] for i in chosen], [bucket.grads[i] for i in chosen],
                                        [bucket.states[i] for i in chosen], bucket.step))
        return split

    # ---- MARS ----------------------------------------------------------------------------------------
    def mars_foreach(self, group: dict, bucket: Bucket) -> None:
        (beta1, beta2), lr, wd, step = group["betas"], group["lr"], group["weight_decay"], bucket.step
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs, last = (bucket.state_list(k) for k in ("exp_avg", "exp_avg_sq", "last_grad"))
        corrected = torch._foreach_sub(grads, last)
        torch._foreach_mul_(corrected, group["gamma"] * beta1 / (1 - beta1))
        torch._foreach_add_(corrected, grads)
        norms = torch._foreach_norm(corrected)
        torch._foreach_clamp_min_(norms, 1.0)
        torch._foreach_div_(corrected, norms)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, corrected, alpha=1 - beta1)
        decay = torch._foreach_mul(params, wd)
        if group["mars_type"] == "mars-adamw":
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, corrected, corrected, value=1 - beta2)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_mul_(denom, 1 / math.sqrt(1 - beta2 ** step))
            torch._foreach_add_(denom, group["eps"])
            torch._foreach_mul_(denom, 1 - beta1 ** step)
            torch._foreach_addcdiv_(decay, exp_avgs, denom)
        else:
            torch._foreach_add_(decay, torch._foreach_sign(exp_avgs))
        torch._foreach_add_(params, decay, alpha=-lr)
        torch._foreach_copy_(last, grads)

    def mars_tensor(self, group, param, grad, state, step):
        (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        exp_avg, exp_avg_sq, last = state["exp_avg"], state["exp_avg_sq"], state["last_grad"]
        corrected = (grad - last).mul_(group["gamma"] * beta1 / (1 - beta1)).add_(grad)
        corrected.div_(torch.linalg.vector_norm(corrected).clamp_min(1.0))
        exp_avg.mul_(beta1).add_(corrected, alpha=1 - beta1)
        if group["mars_type"] == "mars-adamw":
            exp_avg_sq.mul_(beta2).addcmul_(corrected, corrected, value=1 - beta2)
            denom = exp_avg_sq.sqrt().mul_(1 / math.sqrt(1 - beta2 ** step)).add_(group["eps"]).mul_(1 - beta1 ** step)
            direction = exp_avg / denom
        else:
            direction = exp_avg.sign()
        param.add_(direction.add_(param, alpha=wd), alpha=-lr)
        last.copy_(grad)

    # ---- AdamW for the other tensors -----------------------------------------------------------------
    @staticmethod
    def adamw_scalars(group: dict, step: int) -> tuple[float, float, float, float, float]:
        beta1, beta2 = group["betas_1d"]
        wd = group["weight_decay_1d"] if group["decay_1d"] else 0.0
        return beta1, beta2, group["lr"] * group["lr_1d_factor"], wd, (1 - beta1 ** step, math.sqrt(1 - beta2 ** step))

    def adamw_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2, lr, wd, (bc1, bc2_sqrt) = self.adamw_scalars(group, bucket.step)
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_mul_(denom, 1 / bc2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_mul_(denom, bc1)
        decay = torch._foreach_mul(params, wd)
        torch._foreach_addcdiv_(decay, exp_avgs, denom)
        torch._foreach_add_(params, decay, alpha=-lr)

    def adamw_tensor(self, group, param, grad, state, step):
        beta1, beta2, lr, wd, (bc1, bc2_sqrt) = self.adamw_scalars(group, step)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = exp_avg_sq.sqrt().mul_(1 / bc2_sqrt).add_(group["eps"]).mul_(bc1)
        param.add_((exp_avg / denom).add_(param, alpha=wd), alpha=-lr)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        if "last_grad" in bucket.states[0]:
            self.mars_foreach(group, bucket)
        else:
            self.adamw_foreach(group, bucket)

    def update_tensor(self, group, param, grad, state, step):
        if "last_grad" in state:
            self.mars_tensor(group, param, grad, state, step)
        else:
            self.adamw_tensor(group, param, grad, state, step)
