"""Gradient accumulation: one optimizer step's batch as K micro-batches, each forward and backward on its own.

Micro-batch j of m_j of the step's b samples (per device) has its mean loss scaled by w_j = m_j / b, so the
accumulated gradient sum_j w_j grad(mean loss_j) = grad(mean loss over the b samples): the update of one large
batch, up to float summation order. The one difference is BatchNorm, whose statistics (and running averages)
come from each micro-batch, as with a smaller per-device batch under DDP. Under DDP every micro-batch but the
last runs inside `no_sync()`, so the gradients are all-reduced once per step, on the last backward
(`sync="last"`); `sync="manual"` keeps all of them local and leaves the reduction to the caller (the adaptive
batch's test steps read each micro-batch's local gradient first).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class MicroBatch:
    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    share: float  # m_j / b: the weight of its mean loss in the step's


def split(images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, parts: int) -> list[MicroBatch]:
    """The step's batch as `parts` micro-batches (views, sizes differing by at most one)."""
    if parts <= 1:
        return [MicroBatch(images, targets, indices, 1.0)]
    total = len(indices)
    pieces = zip(images.tensor_split(parts), targets.tensor_split(parts), indices.tensor_split(parts))
    return [MicroBatch(i, t, x, len(x) / total) for i, t, x in pieces if len(x)]


def no_sync_of(model) -> Callable[[], contextlib.AbstractContextManager]:
    """The model's DDP `no_sync` context (a no-op for a model that is not DDP)."""
    return getattr(model, "no_sync", contextlib.nullcontext)


def run_micro_batches(parts: list[MicroBatch], loss_of: Callable, backward: Callable[[torch.Tensor], None],
                      no_sync: Callable, sync: str = "last",
                      after_each: Callable[[MicroBatch], None] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """loss_of(micro) -> (mean loss, logits); backward(scaled loss) accumulates into p.grad. Returns the step's
    mean loss (detached, on the device) and each micro-batch's logits (detached)."""
    total, outputs = None, []
    for j, micro in enumerate(parts):
        local = sync == "manual" or j < len(parts) - 1  # DDP all-reduces on the last backward only
        with no_sync() if local else contextlib.nullcontext():
            loss, logits = loss_of(micro)
            backward(loss * micro.share if micro.share != 1.0 else loss)
        if after_each is not None:
            after_each(micro)
        weighted = loss.detach().float() * micro.share
        total = weighted if total is None else total + weighted
        outputs.append(logits.detach())
    return total, outputs
