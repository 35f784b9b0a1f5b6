"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"; google/automl lion_pytorch.py).

    c = b1*m + (1-b1)*g;  p -= lr * (sign(c) + wd*p);  m = b2*m + (1-b2)*g

Decay is decoupled and scaled by lr (p *= 1 - lr*wd), as in the paper: every update has unit size per
element, so Lion wants an lr 3-10x smaller and a weight decay 3-10x larger than AdamW's.
"""
from __future__ import annotations

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class Lion(Optimizer):
    adaptive = False  # sign-based, not second-moment normalised
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr < 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_decay < 0:
            raise ValueError(f"Lion: need lr >= 0, betas in [0, 1), weight_decay >= 0 (got {lr}, {betas}, {weight_decay})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"] = zeros_like(param)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        params, grads, exp_avgs = bucket.params, bucket.grads, bucket.state_list("exp_avg")
        direction = torch._foreach_lerp(exp_avgs, grads, 1 - beta1)
        torch._foreach_sign_(direction)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, direction, alpha=-lr)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta2)

    def update_tensor(self, group, param, grad, state, step):
        lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
        exp_avg = state["exp_avg"]
        direction = exp_avg.lerp(grad, 1 - beta1).sign_()
        if wd != 0:
            param.mul_(1 - lr * wd)
        param.add_(direction, alpha=-lr)
        exp_avg.lerp_(grad, 1 - beta2)
