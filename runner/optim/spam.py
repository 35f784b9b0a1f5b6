"""SPAM (Huang et al. 2025, "SPAM: Spike-Aware Adam with Momentum Reset for Stable LLM Training";
TianjinYellow/SPAM-Optimizer galore_torch/SPAM.py), dense form (no sparse-momentum masks).

Adam with, at step t (from 1):
- momentum reset: every `reset_interval` (DeltaT) steps both moments restart from zero (the bias
  corrections keep counting from the first step, as in the official code);
- spike-aware clipping: once t >= grad_accu_steps and at least grad_accu_steps steps after the last reset,
  entries with g^2 > threshold * v (v before this step's update) become sign(g) * sqrt(threshold * v);
- cosine warm-up after each reset: the update is scaled by 1 - 0.99 * (1 + cos(pi*k/(warmup_steps+1)))/2
  on the k-th step after a reset (k < warmup_steps), 1 otherwise;
- decay after the update, decoupled and scaled by lr: p *= 1 - lr*wd.
The clipped gradient is a copy: p.grad is never written (the trainer logs gradient norms before step()).
"""
from __future__ import annotations

import math

import torch

from runner.optim.base import Bucket, Optimizer, zeros_like


class SPAM(Optimizer):
    adaptive = True
    elementwise = True  # the per-tensor path may update slices (runner.optim.base)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, correct_bias: bool = True, warmup_steps: int = 150,
                 threshold: float = 5000, reset_interval: int = 500, grad_accu_steps: int = 20, foreach: bool | None = None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      correct_bias=correct_bias, warmup_steps=warmup_steps, threshold=threshold,
                                      reset_interval=reset_interval, grad_accu_steps=grad_accu_steps), foreach)

    def init_state(self, group, param, grad, state):
        state["exp_avg"], state["exp_avg_sq"] = zeros_like(param), zeros_like(param)

    @staticmethod
    def plan(group: dict, step: int) -> tuple[bool, bool, float]:
        """(reset the moments, clip, step size) for this step."""
        interval, delay, warmup = group["reset_interval"], group["grad_accu_steps"], group["warmup_steps"]
        reset = interval > 0 and step % interval == 0
        clip = group["threshold"] != 0 and step >= delay and (interval == 0 or step % interval >= delay)
        since_reset = step % interval if interval > 0 and step >= interval else warmup
        scale = 1.0 if since_reset >= warmup else 1 - 0.99 * (1 + math.cos(math.pi * since_reset / (warmup + 1))) / 2
        step_size = group["lr"] * scale
        if group["correct_bias"]:
            beta1, beta2 = group["betas"]
            step_size *= math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
        return reset, clip, step_size

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        beta1, beta2 = group["betas"]
        params, grads = bucket.params, bucket.grads
        exp_avgs, exp_avg_sqs = bucket.state_list("exp_avg"), bucket.state_list("exp_avg_sq")
        reset, clip, step_size = self.plan(group, bucket.step)
        if reset:
            torch._foreach_zero_(exp_avgs)
            torch._foreach_zero_(exp_avg_sqs)
        if clip:  # clamp to +-sqrt(threshold * v): the same as replacing the spikes by sign(g) * bound
            bound = torch._foreach_mul(exp_avg_sqs, group["threshold"])
            torch._foreach_sqrt_(bound)
            grads = torch._foreach_minimum(grads, bound)
            torch._foreach_neg_(bound)
            torch._foreach_maximum_(grads, bound)
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, -step_size)
        if group["weight_decay"] != 0:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])

    def update_tensor(self, group, param, grad, state, step):
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        reset, clip, step_size = self.plan(group, step)
        if reset:
            exp_avg.zero_()
            exp_avg_sq.zero_()
        if clip:  # as in update_foreach (minimum/maximum: faster than clamp with tensor bounds on a CPU)
            bound = torch.mul(exp_avg_sq, group["threshold"]).sqrt_()
            grad = torch.minimum(grad, bound)
            torch.maximum(grad, bound.neg_(), out=grad)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        param.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] != 0:
            param.mul_(1 - group["lr"] * group["weight_decay"])
