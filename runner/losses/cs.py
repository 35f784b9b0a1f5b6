"""Cauchy-Schwarz divergence -log(<p, q> / (||p|| ||q||)): scale invariant, zero iff p is parallel to q."""
from __future__ import annotations

import torch

from runner.losses.base import Loss


class CauchySchwarz(Loss):
    """Computed from logsumexps of log q + log p, 2 log p, 2 log q: finite even when <p, q> underflows."""

    def divergence(self, log_q, log_p):
        lse = lambda x: torch.logsumexp(x, dim=-1)
        return 0.5 * lse(2 * log_p) + 0.5 * lse(2 * log_q) - lse(log_q + log_p)
