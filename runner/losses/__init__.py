"""Losses between the model's distribution p = softmax(logits / T) and a target q.

A loss is an `nn.Module` called as `loss(logits, target)`: `target` holds class indices (N,) or
probability vectors (N, K). Everything is computed in float32 from log-softmax, so it stays finite under
bf16 autocast and for extreme logits. `conf/loss/*.yaml` names the class in `_target_`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def target_distribution(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """q as a (N, K) float32 matrix: one-hot from indices (smoothed towards uniform) or the given vectors."""
    if target.ndim == 2:
        q = target.float()
    else:
        q = F.one_hot(target, num_classes).float()
    return q * (1 - smoothing) + smoothing / num_classes if smoothing else q


class CrossEntropy(nn.Module):
    """H(q, p) = -sum_k q_k log p_k, with label smoothing; torch's fused kernel for class indices."""

    def __init__(self, smoothing: float = 0.0, temperature: float = 1.0):
        super().__init__()
        self.smoothing, self.temperature = smoothing, temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self.temperature
        if target.ndim == 1:
            return F.cross_entropy(logits, target, label_smoothing=self.smoothing)
        q = target_distribution(target, logits.shape[-1], self.smoothing)
        return -(q * F.log_softmax(logits, dim=-1)).sum(-1).mean()
