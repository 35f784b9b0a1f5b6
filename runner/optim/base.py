"""The plumbing every divrun optimizer shares, so each optimizer's module holds only its update rule.

`step()` runs the closure, collects each group's parameters that have gradients, creates their state on
first sight, counts their steps (a Python int per parameter: no host sync), and hands the update rule
buckets of parameters that share device, dtype and step count:
- `foreach=True`: one call of `update_foreach` per bucket with lists, for `torch._foreach_*` ops;
- `foreach=False`: one call of `update_tensor` per parameter (the per-tensor path);
- `foreach=None` (default): torch's rule, foreach on CUDA and per-tensor elsewhere. On a CPU the per-tensor
  path is faster (each tensor stays in cache through all of its ops; see benchmarks/optimizers.py).
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass
class Bucket:
    """Parameters of one group with the same device, dtype and step count (the step just taken, from 1)."""
    params: list[torch.Tensor]
    grads: list[torch.Tensor]
    states: list[dict]
    step: int

    def state_list(self, key: str) -> list[torch.Tensor]:
        return [state[key] for state in self.states]


class Optimizer(torch.optim.Optimizer):
    second_order = False  # the train loop runs backward(create_graph=True) when True
    needs_closure = False  # the train loop passes step() a closure that re-evaluates loss and gradients

    def __init__(self, params, defaults: dict, foreach: bool | None = None):
        super().__init__(params, {**defaults, "foreach": foreach})

    # ---- what an optimizer defines -------------------------------------------------------------------
    def init_state(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        """Fill a new parameter's state (besides "step")."""

    def update_foreach(self, group: dict, bucket: Bucket) -> None:
        raise NotImplementedError

    def update_tensor(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict, step: int) -> None:
        raise NotImplementedError

    # ---- the shared step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        with self.prepare([p for _, params in stepped for p in params]):
            for group, params in stepped:
                self.update_group(group, params)
        return loss

    def prepare(self, params: list[torch.Tensor]):
        """A context around one step's updates for work over all parameters at once (AdaHessian's
        Hessian-vector product); none by default."""
        return contextlib.nullcontext()

    def update_group(self, group: dict, params: list[torch.Tensor]) -> None:
        for bucket in self.buckets(group, params):
            foreach = group["foreach"] if group["foreach"] is not None else bucket.params[0].is_cuda
            if foreach:
                self.update_foreach(group, bucket)
            else:
                for param, grad, state in zip(bucket.params, bucket.grads, bucket.states):
                    self.update_tensor(group, param, grad, state, bucket.step)

    def grad_of(self, param: torch.Tensor) -> torch.Tensor:
        return param.grad.detach()

    def buckets(self, group: dict, params: list[torch.Tensor]) -> list[Bucket]:
        buckets: dict[tuple, Bucket] = defaultdict(lambda: Bucket([], [], [], 0))
        for param in params:
            if param.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            grad, state = self.grad_of(param), self.state[param]
            if "step" not in state:
                state["step"] = 0
                self.init_state(group, param, grad, state)
            state["step"] += 1
            bucket = buckets[(param.device, param.dtype, state["step"])]
            bucket.params.append(param)
            bucket.grads.append(grad)
            bucket.states.append(state)
            bucket.step = state["step"]
        return list(buckets.values())


def zeros_like(param: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)
