"""ADOPT (Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate";
iShohei220/adopt, the `torch-adopt` package 0.1.0).

Step 1 only initialises v = g^2 (no update). From step t = 2 on, with the clip c_t = (t-1)^clip_exponent:
    g += wd*p (decouple=False: L2)   or   p *= 1 - lr*wd (decouple=True: decoupled, x lr)
    m = lerp(m, clamp(g / max(sqrt(v), eps), -c_t, c_t), 1-b1);  p -= lr*m;  v = b2*v + (1-b2)*g^2
The second moment is updated after it normalised the gradient: the current gradient never scales itself.
Official defaults: lr 1e-3, betas (0.9, 0.9999), eps 1e-6, clip step^0.25 (`clip_exponent: 0.25`; null
turns clipping off), weight_decay 0 with coupled (L2) decay.
"""
from __future__ import annotations

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class ADOPT(Optimizer):
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)
    adaptive = True
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.9999), eps: float = 1e-6,
                 weight_decay: float = 0.0, decouple: bool = False, clip_exponent: float | None = 0.25,
                 foreach: bool | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"ADOPT: need lr, eps, weight_decay >= 0 and betas in [0, 1) (got {lr}, {eps}, "
                             f"{weight_decay}, {betas})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, decouple=decouple,
                                      clip_exponent=clip_exponent), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)

    @staticmethod
    def clip(group: dict, step: int) -> float | None:
        exponent = group["clip_exponent"]
        return None if exponent is None else (step - 1) ** exponent

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        if wd != 0 and not group["decouple"]:
            grads = torch._foreach_add(grads, params, alpha=wd)
        if bucket.step == 1:
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads)
            return
        if wd != 0 and group["decouple"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_clamp_min_(denom, group["eps"])
        normed = torch._foreach_div(grads, denom)
        clip = self.clip(group, bucket.step)
        if clip is not None:
            torch._foreach_clamp_min_(normed, -clip)
            torch._foreach_clamp_max_(normed, clip)
        torch._foreach_lerp_(exp_avgs, normed, 1 - beta1)
        torch._foreach_add_(params, exp_avgs, alpha=-lr)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)

    def update_tensor(self, group, param, grad, state, step):
        (beta1, beta2), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        if wd != 0 and not group["decouple"]:
            grad = grad.add(param, alpha=wd)
        if step == 1:
            exp_avg_sq.addcmul_(grad, grad)
            return
        if wd != 0 and group["decouple"]:
            param.mul_(1 - lr * wd)
        normed = grad / exp_avg_sq.sqrt().clamp_min_(group["eps"])
        clip = self.clip(group, step)
        if clip is not None:
            normed.clamp_(-clip, clip)
        exp_avg.lerp_(normed, 1 - beta1)
        param.add_(exp_avg, alpha=-lr)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
