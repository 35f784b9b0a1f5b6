"""Adan (Xie et al. 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models";
sail-sg/Adan adan.py, whose betas convention this follows: b = 1 - the paper's beta).

At step t (from 1), with the previous gradient g' (g' = g at step 1, so the first difference is 0):
    m = b1*m + (1-b1)*g;   d = b2*d + (1-b2)*(g - g');   n = b3*n + (1-b3)*(g + b2*(g - g'))^2
    u = (lr/bc1) * m / (sqrt(n)/sqrt(bc3) + eps) + (lr*b2/bc2) * d / (sqrt(n)/sqrt(bc3) + eps)
    no_prox=False (default): p = (p - u) / (1 + lr*wd)   (proximal decay);   no_prox=True: p = p*(1 - lr*wd) - u
with bc_i = 1 - b_i^t. Official defaults: lr 1e-3, betas (0.98, 0.92, 0.99), eps 1e-8, weight_decay 0
(the README recommends 0.02 with these betas for ViT/ResNet). The official max_grad_norm (global-norm
clipping, read back with .item()) is not taken over: `trainer.grad_clip` clips by the global norm on the device.
`adan-pytorch` (lucidrains) uses 1 - beta and skips the moment updates at step 1; from the same state its step
equals this one (tests/test_optim_oracles.py).
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class Adan(Optimizer):
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)
    adaptive = True
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, no_prox: bool = False, foreach: bool | None = None):
        if lr < 0 or eps < 0 or weight_decay < 0 or len(betas) != 3 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"Adan: need lr, eps, weight_decay >= 0 and three betas in [0, 1) (got {lr}, {eps}, "
                             f"{weight_decay}, {betas})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, no_prox=no_prox),
                         foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"], state["exp_avg_diff"] = (zeros_like(param) for _ in range(3))
        state["previous_grad"] = grad.clone(memory_format=torch.preserve_format)

    @staticmethod
    def scalars(group: dict, step: int) -> tuple[float, float, float]:
        """(step size of m, step size of d, sqrt(bc3))."""
        beta1, beta2, beta3 = group["betas"]
        lr = group["lr"]
        return lr / (1 - beta1 ** step), lr * beta2 / (1 - beta2 ** step), math.sqrt(1 - beta3 ** step)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        (beta1, beta2, beta3), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs, diffs = (bucket.state_list(k) for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff"))
        previous = bucket.state_list("previous_grad")
        difference = torch._foreach_sub(grads, previous)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_lerp_(diffs, difference, 1 - beta2)
        nesterov = torch._foreach_add(grads, difference, alpha=beta2)
        torch._foreach_mul_(exp_avg_sqs, beta3)
        torch._foreach_addcmul_(exp_avg_sqs, nesterov, nesterov, value=1 - beta3)
        step_m, step_d, bc3_sqrt = self.scalars(group, bucket.step)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bc3_sqrt)
        torch._foreach_add_(denom, group["eps"])
        if group["no_prox"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_addcdiv_(params, exp_avgs, denom, -step_m)
        torch._foreach_addcdiv_(params, diffs, denom, -step_d)
        if not group["no_prox"]:
            torch._foreach_div_(params, 1 + lr * wd)
        torch._foreach_copy_(previous, grads)

    def update_tensor(self, group, param, grad, state, step):
        (beta1, beta2, beta3), lr, wd = group["betas"], group["lr"], group["weight_decay"]
        exp_avg, exp_avg_sq, diff, previous = (state[k] for k in ("exp_avg", "exp_avg_sq", "exp_avg_diff", "previous_grad"))
        difference = grad - previous
        exp_avg.lerp_(grad, 1 - beta1)
        diff.lerp_(difference, 1 - beta2)
        nesterov = difference.mul_(beta2).add_(grad)
        exp_avg_sq.mul_(beta3).addcmul_(nesterov, nesterov, value=1 - beta3)
        step_m, step_d, bc3_sqrt = self.scalars(group, step)
        denom = exp_avg_sq.sqrt().div_(bc3_sqrt).add_(group["eps"])
        if group["no_prox"]:
            param.mul_(1 - lr * wd)
        param.addcdiv_(exp_avg, denom, value=-step_m)
        param.addcdiv_(diff, denom, value=-step_d)
        if not group["no_prox"]:
            param.div_(1 + lr * wd)
        previous.copy_(grad)
