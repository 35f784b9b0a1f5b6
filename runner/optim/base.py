"""The plumbing every divrun optimizer shares, so each optimizer's module holds only its update rule.

`step()` runs the closure, collects each group's parameters that have gradients, creates their state on
first sight, counts their steps (a Python int per parameter: no host sync), and hands the update rule
buckets of parameters that share device, dtype and step count:
- `foreach=True`: one call of `update_foreach` per bucket with lists, for `torch._foreach_*` ops;
- `foreach=False`: one call of `update_tensor` per parameter (the per-tensor path); for an `elementwise`
  rule, one call per slice of at most SLICE_BYTES of each large parameter;
- `foreach=None` (default): see `uses_foreach`.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices

# On a CPU an element-wise rule's per-tensor path updates large tensors in slices of this many bytes, so that
# the slice of the parameter, its gradient and its states stays in cache (L2/L3) through all of the rule's
# ops: memory traffic is one read (and write) of each tensor instead of one per op.
SLICE_BYTES = 512 * 1024


def uses_foreach(foreach: bool | None, device: torch.device) -> bool:
    """The path `foreach=None` takes. On devices with torch's foreach kernels (CUDA, XPU, ...) a step's cost is
    dominated by kernel launches, which multi-tensor ops batch (torch's own rule, optimizer.py
    _default_to_fused_or_foreach). On a CPU there are no launches to save but memory traffic is the cost: the
    per-tensor path, sliced for element-wise rules, keeps data in cache across a rule's ops, where a foreach
    op streams all parameters through memory once per op (benchmarks/optimizers.py: 1.5-3x slower)."""
    return foreach if foreach is not None else device.type in _get_foreach_kernels_supported_devices()


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
    # capabilities (runner/optim/capabilities.py): every optimizer declares `adaptive` itself
    second_order = False  # the train loop runs backward(create_graph=True) when True
    needs_closure = False  # the train loop passes step() a closure that re-evaluates loss and gradients
    # True when update_tensor updates each entry from the same entry of the parameter, gradient and states
    # (plus Python scalars) and writes states in place: the per-tensor path may then pass it flat slices
    elementwise = False

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
            if uses_foreach(group["foreach"], bucket.params[0].device):
                self.update_foreach(group, bucket)
            elif self.is_elementwise(group):
                for param, grad, state in zip(bucket.params, bucket.grads, bucket.states):
                    for param_slice, grad_slice, state_slice in state_slices(param, grad, state):
                        self.update_tensor(group, param_slice, grad_slice, state_slice, bucket.step)
            else:
                for param, grad, state in zip(bucket.params, bucket.grads, bucket.states):
                    self.update_tensor(group, param, grad, state, bucket.step)

    def is_elementwise(self, group: dict) -> bool:
        """Whether this group's rule is element-wise (an optimizer with several rules decides per group)."""
        return self.elementwise

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


class Wrapper:
    """An optimizer around a base optimizer (Lookahead, ⊥Grad): it exposes the base's `param_groups` (the trainer
    sets their lr) and `state`, and zeroes the base's gradients. Capabilities (runner/optim/capabilities.py):
    per-coordinate normalisation is the base's (None); second-order and closure needs are its own, the base's
    are added to them."""
    adaptive = None
    second_order = needs_closure = False

    def __init__(self, base: torch.optim.Optimizer):
        self.base = base

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)


def zeros_like(param: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(param, memory_format=torch.preserve_format)


def slices(*tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Flat views of SLICE_BYTES of same-shaped contiguous CPU tensors, slice by slice (the tensors themselves
    when they are small, one is not contiguous, or they are on an accelerator, where a slice costs a launch)."""
    length = max(1, SLICE_BYTES // tensors[0].element_size())
    if tensors[0].device.type != "cpu" or tensors[0].numel() <= length or not all(t.is_contiguous() for t in tensors):
        return [tensors]
    return list(zip(*(t.view(-1).split(length) for t in tensors)))


def state_slices(param: torch.Tensor, grad: torch.Tensor, state: dict) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """(param, grad, state) slices for an element-wise rule: every state tensor shaped like param is sliced,
    other entries (the step count) are shared."""
    keys = [key for key, value in state.items() if torch.is_tensor(value) and value.shape == param.shape]
    return [(pieces[0], pieces[1], {**state, **dict(zip(keys, pieces[2:]))})
            for pieces in slices(param, grad, *(state[key] for key in keys))]
