"""AdaBelief (Zhuang et al. 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed
Gradients"; juntang-zhuang/Adabelief-Optimizer, adabelief-pytorch 0.2.1).

    m = b1*m + (1-b1)*g;  s = b2*s + (1-b2)*(g-m)^2 + eps   (eps added into s in place, every step)
    p -= lr/bc1 * m / (sqrt(s)/sqrt(bc2) + eps)

Decay: `weight_decouple=True` is p *= 1 - lr*wd (AdamW-style); False adds wd*p to the gradient (L2, not
scaled by lr). `rectify=True` applies RAdam's variance rectification: while the approximated SMA length
rho_t < 5 the step is SGD with momentum (lr/bc1 * m, if `degenerated_to_sgd`) or nothing; after, the
step is lr*r_t/bc1 * m / (sqrt(s) + eps). The package's defaults (eps 1e-16, decoupled, rectified) are
this class's; `adabelief_cifar` / `adabelief_imagenet` hold the README's settings.
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


def rectification(beta2: float, step: int) -> float | None:
    """RAdam's r_t (None while rho_t < 5, the variance not yet tractable)."""
    rho_inf = 2 / (1 - beta2) - 1
    beta2_t = beta2 ** step
    rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    if rho_t < 5:
        return None
    return math.sqrt((1 - beta2_t) * (rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2))


class AdaBelief(Optimizer):
    adaptive = True
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-16,
                 weight_decay: float = 0.0, weight_decouple: bool = True, rectify: bool = True,
                 degenerated_to_sgd: bool = True, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      weight_decouple=weight_decouple, rectify=rectify,
                                      degenerated_to_sgd=degenerated_to_sgd), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_var"] = zeros_like(param), zeros_like(param)

    @staticmethod
    def plan(group: dict, step: int) -> tuple[str, float, float]:
        """What this step does: ("adaptive", step size, eps in the denominator), ("sgd", step size, 0) or
        ("none", 0, 0), with the bias corrections folded into the step size."""
        beta1, beta2 = group["betas"]
        lr, eps, bc1 = group["lr"], group["eps"], 1 - beta1 ** step
        if not group["rectify"]:
            bc2_sqrt = math.sqrt(1 - beta2 ** step)
            return "adaptive", lr * bc2_sqrt / bc1, eps * bc2_sqrt
        r_t = rectification(beta2, step)
        if r_t is not None:
            return "adaptive", lr * r_t / bc1, eps
        return ("sgd", lr / bc1, 0.0) if group["degenerated_to_sgd"] else ("none", 0.0, 0.0)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_vars = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_var")
        if wd != 0 and group["weight_decouple"]:
            torch._foreach_mul_(params, 1 - lr * wd)
        elif wd != 0:
            grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        residual = torch._foreach_sub(grads, exp_avgs)
        torch._foreach_mul_(exp_avg_vars, beta2)
        torch._foreach_addcmul_(exp_avg_vars, residual, residual, 1 - beta2)
        torch._foreach_add_(exp_avg_vars, group["eps"])
        kind, step_size, eps = self.plan(group, bucket.step)
        if kind == "adaptive":
            denom = torch._foreach_sqrt(exp_avg_vars)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)
        elif kind == "sgd":
            torch._foreach_add_(params, exp_avgs, alpha=-step_size)

    def update_tensor(self, group, param, grad, state, step):
        beta1, beta2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        exp_avg, exp_avg_var = state["exp_avg"], state["exp_avg_var"]
        if wd != 0 and group["weight_decouple"]:
            param.mul_(1 - lr * wd)
        elif wd != 0:
            grad = grad.add(param, alpha=wd)
        exp_avg.lerp_(grad, 1 - beta1)
        residual = grad - exp_avg
        exp_avg_var.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(group["eps"])
        kind, step_size, eps = self.plan(group, step)
        if kind == "adaptive":
            param.addcdiv_(exp_avg, exp_avg_var.sqrt().add_(eps), value=-step_size)
        elif kind == "sgd":
            param.add_(exp_avg, alpha=-step_size)
