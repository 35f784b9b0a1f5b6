"""Test-local components that misbehave on purpose (imported by `_target_`; subprocess tests put tests/ on
PYTHONPATH): a model that fails to build, one whose loss or one gradient turns NaN at a chosen step, and
components with config hooks like the ones the loss, optimizer and distillation modules contribute."""
from __future__ import annotations

import time

import torch
from torch import nn

from runner.checkpoint import has_checkpoint
from runner.models.small import SmallCNN


class Boom(SmallCNN):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("this model cannot be built")


class NaNAt(SmallCNN):
    """SmallCNN whose training forward pass number `nan_at` (0-based, = the step) returns NaN logits, or, with
    `grad_only`, whose `trap` parameter gets a NaN gradient at that step while the loss stays finite."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 8, nan_at: int = 3, grad_only: bool = False):
        super().__init__(in_channels, num_classes, width)
        self.nan_at, self.grad_only, self.calls = nan_at, grad_only, 0
        self.trap = nn.Parameter(torch.zeros(()))
        self.trap.register_hook(lambda grad: grad * float("nan") if self.poisoned else grad)

    @property
    def poisoned(self) -> bool:
        return self.calls - 1 == self.nan_at

    def forward(self, x):
        if self.training:
            self.calls += 1
        logits = super().forward(x) + self.trap * 0
        return logits * float("nan") if self.training and self.poisoned and not self.grad_only else logits


class SecondOrderSGD(torch.optim.SGD):
    """Stands in for AdaHessian & co.: the train loop reads `second_order`."""
    second_order = True


class ReverseKL(nn.Module):
    """Stands in for the losses module's reverse KL: KL(p || q) is infinite for one-hot q."""

    def __init__(self, smoothing: float = 0.0, temperature: float = 1.0):
        super().__init__()

    @classmethod
    def validate_config(cls, cfg) -> list[str]:
        if cfg.loss.smoothing <= 0:
            return ["loss=reverse_kl: KL(p || q) is infinite for one-hot targets; pass loss.smoothing=0.1 "
                    "(or another value > 0)"]
        return []


class Distill:
    """Stands in for the distillation module: its teacher is a run folder that must hold a checkpoint."""

    def __init__(self, teacher: str, weight: float = 1.0):
        self.teacher = teacher

    @classmethod
    def validate_config(cls, cfg) -> list[str]:
        if not has_checkpoint(cfg.distill.teacher):
            return [f"distill.teacher={cfg.distill.teacher}: no checkpoint in that folder; pass the run folder of "
                    f"a finished run (it holds checkpoints/last.pt)"]
        return []


class Slow(SmallCNN):
    """SmallCNN that sleeps `delay` seconds in each training forward pass: a run long enough to be killed in
    its middle, with the same numbers as SmallCNN."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 8, delay: float = 0.05):
        super().__init__(in_channels, num_classes, width)
        self.delay = delay

    def forward(self, x):
        if self.training:
            time.sleep(self.delay)
        return super().forward(x)


class UndeclaredSGD(torch.optim.Optimizer):
    """A third-party optimizer that declares no capabilities (`adaptive` unknown): plain SGD."""

    def __init__(self, params, lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, fused=None, foreach=None):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
