"""AdaGrad-Norm (Ward, Wu & Bottou 2019, "AdaGrad stepsizes", arXiv 1806.01811; the scalar AdaGrad of Lau et al.
2024, AdAdaGrad, arXiv 2402.11215, Algorithm 1):

    g_k = grad + weight_decay * p                       (coupled L2, as torch's Adagrad)
    b_k^2 = b_{k-1}^2 + ||g_k||^2                        (one scalar for the whole model: all groups, all tensors)
    p_{k+1} = p_k - lr * g_k / (b_k + eps)

b_{-1}^2 = `initial_accumulator_value`. The official AdAdaGrad repository's `adagradnorm.py` keeps one
accumulator per output row of each weight (Ward et al.'s code), not the papers' scalar; this follows the papers'
equation, which their theory analyses. The accumulator is a device tensor (no host sync), kept in the state of
the first parameter so that `state_dict` carries it.
"""
from __future__ import annotations

import contextlib

import torch

from runner.optim.base import Bucket, Optimizer


class AdaGradNorm(Optimizer):
    adaptive = False  # one scalar step size for the whole model: not per-coordinate normalised
    def __init__(self, params, lr: float = 1.0, initial_accumulator_value: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0, foreach: bool | None = None):
        if initial_accumulator_value < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"AdaGrad-Norm: need initial_accumulator_value, eps, weight_decay >= 0 "
                             f"(got {initial_accumulator_value}, {eps}, {weight_decay})")
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay), foreach)
        self.initial_accumulator_value = initial_accumulator_value
        self.denominator: torch.Tensor | None = None
        self.decayed: dict[torch.Tensor, torch.Tensor] = {}  # this step's g + wd * p (p.grad stays as it is)

    def accumulator(self) -> torch.Tensor:
        """b^2, in the state of the model's first parameter."""
        state = self.state[self.param_groups[0]["params"][0]]
        if "norm_sum" not in state:
            first = self.param_groups[0]["params"][0]
            dtype = torch.promote_types(first.dtype, torch.float32)
            state["norm_sum"] = torch.full((), self.initial_accumulator_value, dtype=dtype, device=first.device)
        return state["norm_sum"]

    @contextlib.contextmanager
    def prepare(self, params: list[torch.Tensor]):
        """The step's global norm over every group (after each group's L2 term) and the shared denominator."""
        stepped = set(params)
        for group in self.param_groups:
            members = [p for p in group["params"] if p in stepped]
            if group["weight_decay"] != 0 and members:
                decayed = torch._foreach_add([p.grad for p in members], members, alpha=group["weight_decay"])
                self.decayed.update(zip(members, decayed))
        norms = torch._foreach_norm([self.grad_of(p) for p in params])
        accumulator = self.accumulator()
        accumulator.add_(torch.stack(norms).to(accumulator.dtype).square().sum())
        self.denominator = accumulator.sqrt() + self.param_groups[0]["eps"]
        try:
            yield
        finally:
            self.decayed.clear()

    def grad_of(self, param: torch.Tensor) -> torch.Tensor:
        return self.decayed.get(param, param.grad.detach())

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        denominator = self.denominator.to(bucket.params[0].dtype)
        torch._foreach_addcdiv_(bucket.params, bucket.grads, [denominator] * len(bucket.params), value=-group["lr"])

    def update_tensor(self, group, param, grad, state, step):
        param.addcdiv_(grad, self.denominator.to(param.dtype), value=-group["lr"])
