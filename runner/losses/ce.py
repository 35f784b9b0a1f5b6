"""Cross-entropy H(q, p) = -sum_k q_k log p_k, labels smoothed (torch's fused kernel for both target kinds)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.losses.base import Loss


class CrossEntropy(Loss):
    """H(q, p) = KL(q || p) + H(q): same gradient as KL for fixed q; torch's kernel for both target kinds."""

    def sample_losses(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float,
                      reduction: str = "mean") -> torch.Tensor:
        target = target if target.ndim == 1 else target.to(logits.dtype)
        return F.cross_entropy(self.scores(logits), target, label_smoothing=smoothing, reduction=reduction)

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        return -(log_q.exp() * log_p).sum(-1)
