"""Prodigy (Mishchenko & Defazio 2024, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner";
konstmish/prodigy, the `prodigyopt` package 1.1.2): Adam whose step size d is estimated on the fly.

At step k (from 0), with d_k the current estimate, lr the (scheduled) lr, b3 = sqrt(b2) unless given, and
dlr = d_k * lr * (sqrt(1 - b2^(k+1)) / (1 - b1^(k+1)) if use_bias_correction else 1):
    r = b3*r + (d_k/d0) * dlr * <g, p0 - p>                          (summed over all parameters)
    m = b1*m + d_k*(1-b1)*g;   v = b2*v + d_k^2*(1-b2)*g^2
    s = b3*s + (d_k/d0) * (d_k if safeguard_warmup else dlr) * g;    d_hat = d_coef * r / sum|s|
    d_{k+1} = min(max(d_max, d_hat), d_k * growth_rate) with d_max = max(d_max, d_hat) (the first step takes
    max(d0, d_hat)),  then  p *= 1 - wd*dlr (decouple) ;  p -= dlr * m / (sqrt(v) + d_{k+1}*eps)
Coupled decay (decouple=False) adds wd*p to g instead. p0 is the initial point. d, d_max, r and sum|s| live on
the device (the reference reads them back every step; no host sync here) and `metrics()` hands the trainer d
for its records (`optimizer/d`). Official defaults: lr 1.0, betas (0.9, 0.999), beta3 null, eps 1e-8,
weight_decay 0, decouple true, use_bias_correction false, safeguard_warmup false, d0 1e-6, d_coef 1,
growth_rate inf (null here), slice_p 1 (s and p0 over every slice_p-th entry). All param groups share one d and one lr
(as in the reference, different lrs other than 0 are refused): norm_lr_scale must stay 1. One path, multi-tensor
ops (the estimate sums over every parameter). A step whose gradients are all exactly zero leaves d as it was, as
in the reference, but counts towards the bias correction's k (the reference does not count it).
"""
from __future__ import annotations

import contextlib
import math

import torch

from runner.optim.base import Optimizer


class Prodigy(Optimizer):
    adaptive = True
    second_order = False
    needs_closure = False

    def __init__(self, params, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True, use_bias_correction: bool = False,
                 safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
                 growth_rate: float | None = None, slice_p: int = 1):
        if d0 <= 0 or lr <= 0 or eps <= 0 or not all(0 <= b < 1 for b in betas) or slice_p < 1:
            raise ValueError(f"Prodigy: need d0, lr, eps > 0, betas in [0, 1) and slice_p >= 1 (got {d0}, {lr}, {eps}, "
                             f"{betas}, {slice_p})")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), beta3=beta3, eps=eps, weight_decay=weight_decay,
                                      decouple=decouple, use_bias_correction=use_bias_correction,
                                      safeguard_warmup=safeguard_warmup, d0=d0, d_coef=d_coef,
                                      growth_rate=math.inf if growth_rate is None else growth_rate, slice_p=slice_p))
        lrs = {group["lr"] for group in self.param_groups} - {0.0}
        if len(lrs) > 1:
            raise ValueError(f"Prodigy: every param group needs the same lr (or 0), got {sorted(lrs)}; "
                             "leave optimizer.norm_lr_scale at 1")
        # one estimate for all groups, kept in self.state under a key of its own: state_dict() carries it and
        # the non-finite guard (trainer.on_nonfinite=skip) restores it with the rest of the state
        self.state["estimate"] = {"d": torch.tensor(d0, dtype=torch.float64), "d_max": torch.tensor(d0, dtype=torch.float64),
                                  "numerator": torch.zeros((), dtype=torch.float64), "k": 0}

    # ---- state -------------------------------------------------------------------------------------------
    def init_state(self, group, param, grad, state):
        sliced = param.detach().flatten()[::group["slice_p"]]
        state["s"], state["p0"] = torch.zeros_like(sliced), sliced.clone()
        if group["betas"][0] > 0:
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)

    def metrics(self) -> dict[str, torch.Tensor]:
        """Device scalars the trainer records at its logging interval."""
        return {"optimizer/d": self.state["estimate"]["d"]}

    def current_estimate(self, device: torch.device) -> dict:
        estimate = self.state["estimate"]
        for key in ("d", "d_max", "numerator"):
            estimate[key] = estimate[key].to(device)  # no copy once there (a checkpoint may load it elsewhere)
        return estimate

    # ---- the step: the shared step's groups accumulate the estimate's sums, prepare()'s exit uses them ---
    @contextlib.contextmanager
    def prepare(self, params: list[torch.Tensor]):
        if not params:
            yield
            return
        first, estimate = self.param_groups[0], self.current_estimate(params[0].device)
        (beta1, beta2), k = first["betas"], estimate["k"]
        lr = max(group["lr"] for group in self.param_groups)
        correction = math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1)) if first["use_bias_correction"] else 1.0
        beta3 = first["beta3"] if first["beta3"] is not None else math.sqrt(beta2)
        d = estimate["d"]
        self.pass_ = {"beta3": beta3, "d": d, "dlr": d * (lr * correction), "buckets": [],
                      "numerator": estimate["numerator"] * beta3, "denominator": torch.zeros_like(d)}
        yield
        self.finish(first, estimate)

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        """The first pass: moments, s, and the estimate's sums r and sum|s| over this group."""
        buckets = self.buckets(group, params)
        if group["lr"] == 0:
            return
        run, (beta1, beta2) = self.pass_, group["betas"]
        d, dlr = run["d"], run["dlr"]
        for bucket in buckets:
            if group["weight_decay"] != 0 and not group["decouple"]:
                bucket.grads = torch._foreach_add(bucket.grads, bucket.params, alpha=group["weight_decay"])
            sliced = [g.flatten()[::group["slice_p"]] for g in bucket.grads]
            distance = [p0 - p.flatten()[::group["slice_p"]] for p0, p in zip(bucket.state_list("p0"), bucket.params)]
            dots = torch.stack([torch.dot(g, x) for g, x in zip(sliced, distance)]).sum()
            run["numerator"] = run["numerator"] + (d / group["d0"]) * dlr * dots
            self.moments(group, bucket, d, beta1, beta2)
            scale = (d / group["d0"]) * (d if group["safeguard_warmup"] else dlr)
            s = bucket.state_list("s")
            torch._foreach_mul_(s, run["beta3"])
            torch._foreach_add_(s, torch._foreach_mul(sliced, scale.to(sliced[0].dtype)))
            run["denominator"] = run["denominator"] + torch.stack(torch._foreach_norm(s, 1)).sum().to(d.dtype)
            run["buckets"].append((group, bucket))

    def finish(self, first: dict, estimate: dict) -> None:
        """The new d from the sums, then the second pass: the parameter updates."""
        run = self.pass_
        d, numerator, denominator = run["d"], run["numerator"], run["denominator"]
        progress = denominator > 0  # the reference returns before any update when sum|s| = 0
        d_hat = torch.where(progress, first["d_coef"] * numerator / denominator.clamp_min(1e-300), d)
        d_new = torch.where((d == first["d0"]) & progress, torch.maximum(d, d_hat), d)
        d_max = torch.where(progress, torch.maximum(estimate["d_max"], d_hat), estimate["d_max"])
        d_new = torch.where(progress, torch.minimum(d_max, d_new * first["growth_rate"]), d)
        for group, bucket in run["buckets"]:
            self.take_step(group, bucket, d_new, torch.where(progress, run["dlr"], 0.0))
        estimate.update(d=d_new, d_max=d_max, numerator=torch.where(progress, numerator, estimate["numerator"]),
                        k=estimate["k"] + 1)
        del self.pass_

    def moments(self, group: dict, bucket, d: torch.Tensor, beta1: float, beta2: float) -> None:
        dtype = bucket.params[0].dtype
        grads, exp_avg_sqs = bucket.grads, bucket.state_list("exp_avg_sq")
        if beta1 > 0:
            exp_avgs = bucket.state_list("exp_avg")
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, torch._foreach_mul(grads, (d * (1 - beta1)).to(dtype)))
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, torch._foreach_mul(grads, (d * d * (1 - beta2)).to(dtype)))

    def take_step(self, group: dict, bucket, d: torch.Tensor, dlr: torch.Tensor) -> None:
        dtype, params = bucket.params[0].dtype, bucket.params
        denom = torch._foreach_sqrt(bucket.state_list("exp_avg_sq"))
        torch._foreach_add_(denom, (d * group["eps"]).to(dtype))
        if group["weight_decay"] != 0 and group["decouple"]:
            torch._foreach_add_(params, torch._foreach_mul(params, (-group["weight_decay"] * dlr).to(dtype)))
        numerators = bucket.state_list("exp_avg") if group["betas"][0] > 0 else \
            torch._foreach_mul(bucket.grads, d.to(dtype))
        torch._foreach_addcdiv_(params, torch._foreach_mul(numerators, (-dlr).to(dtype)), denom)
