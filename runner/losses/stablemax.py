"""StableMax and softmax collapse (Prieto, Barsbey, Mediano & Birdal 2025, "Grokking at the Edge of Numerical
Stability", arXiv 2501.04697; official code LucasPrietoAl/grokking-at-the-edge-of-numerical-stability, utils.py).

StableMax replaces exp in the softmax by the ramp
    s(x) = x + 1 for x >= 0,    s(x) = 1 / (1 - x) for x < 0,       StableMax(x)_i = s(x_i) / sum_j s(x_j),
which grows linearly instead of exponentially, so float32 logits of 1e4 still give every class a
representable probability and a gradient. We compute log s(x) = log1p(x) or -log1p(-x) and normalise in log
space (logsumexp), which equals the official log(s(x) / sum s(x)) without its 1e-30 epsilon and its float64
cast. StableMax is not shift invariant, unlike the softmax.

Softmax collapse (the paper's Section 3, official logger.py `compute_softmax_collapse`): a sample's softmax
has collapsed when, in float32, the shifted exponentials sum to exactly 1, i.e. every non-maximal term is
absorbed by the maximal one; its loss and gradient are then exactly 0 for the predicted class.
"""
from __future__ import annotations

import torch

NORMALIZERS = ("softmax", "stablemax")


def log_s(x: torch.Tensor) -> torch.Tensor:
    """log s(x). Each branch sees only its own half (0 elsewhere), so the unselected branch stays finite and its
    zero gradient never meets an inf; `where` (unlike clamp) passes the gradient at x = 0, where s' = 1."""
    positive = x >= 0
    zero = torch.zeros_like(x)
    return torch.where(positive, torch.log1p(torch.where(positive, x, zero)), -torch.log1p(torch.where(positive, zero, -x)))


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log StableMax(logits) along `dim`."""
    log_values = log_s(logits)
    return log_values - torch.logsumexp(log_values, dim=dim, keepdim=True)


def softmax_collapsed(logits: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether each row's float32 softmax has collapsed (sum of exp(z - max z) == 1 exactly)."""
    z = logits.detach().float()
    return torch.exp(z - z.amax(-1, keepdim=True)).sum(-1) == 1
