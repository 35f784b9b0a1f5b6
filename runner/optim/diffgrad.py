"""diffGrad (Dubey et al. 2019, "diffGrad: An Optimization Method for Convolutional Neural Networks";
shivram1987/diffGrad diffGrad_v2.py, the rule torch-optimizer's DiffGrad implements).

    g += wd*p (L2, not scaled by lr);  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2
    xi = sigmoid(|g_prev - g|);  p -= lr*sqrt(bc2)/bc1 * xi*m / (sqrt(v) + eps);  g_prev = copy of g

g_prev starts at zero and is a copy (v1 kept a reference to the live gradient tensor).
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class DiffGrad(Optimizer):
    adaptive = True
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), foreach)

    def init_state(self, group, param, grad, state):
        for key in ("exp_avg", "exp_avg_sq", "previous_grad"):
            state[key] = zeros_like(param)

    @staticmethod
    def step_size(group: dict, step: int) -> float:
        beta1, beta2 = group["betas"]
        return group["lr"] * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        previous = bucket.state_list("previous_grad")
        if group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        friction = torch._foreach_sub(previous, grads)
        torch._foreach_abs_(friction)
        torch._foreach_sigmoid_(friction)
        torch._foreach_copy_(previous, grads)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_div_(friction, denom)
        torch._foreach_addcmul_(params, exp_avgs, friction, -self.step_size(group, bucket.step))

    def update_tensor(self, group, param, grad, state, step):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq, previous = state["exp_avg"], state["exp_avg_sq"], state["previous_grad"]
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        friction = (previous - grad).abs_().sigmoid_()
        previous.copy_(grad)
        param.addcdiv_(exp_avg * friction, exp_avg_sq.sqrt().add_(group["eps"]), value=-self.step_size(group, step))
