"""⊥Grad (Prieto, Barsbey, Mediano & Birdal 2025, "Grokking at the Edge of Numerical Stability", arXiv
2501.04697, Section 5; official code LucasPrietoAl/grokking-at-the-edge-of-numerical-stability, orthograd.py).

Before the base optimizer steps, each gradient loses its component along its weights:
    g_perp = g - (w . g) / (w . w + eps) w,        then (rescale, the official code)  g_perp *= ||g|| / ||g_perp||
so plain gradient descent can no longer lower the loss by scaling the weights up (the paper's naive loss
minimisation). As in the official code the projection is per parameter tensor (w is one tensor, not the whole
parameter vector), covers every parameter the base optimizer steps, and keeps the gradient's norm
(`rescale: false` is the bare projection of the paper's equation). The base then applies its own rule to
g_perp: an SGD update is orthogonal to each weight tensor; momentum, adaptive normalisation and weight decay
(the base's) act on top, as in the official code.

The base is built by divrun's wrapper mechanism (`optimizer.base`, `optimizer.base_overrides`, as for SAM and
Lookahead); ⊥Grad shares its param groups and state, and keeps nothing itself. All on the device: no host sync.
"""
from __future__ import annotations

import torch

from runner.errors import ConfigError
from runner.optim.base import Wrapper


def flat_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b) without a temporary where both are contiguous."""
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return (a * b).sum()


@torch.no_grad()
def project_out_weights(params: list[torch.Tensor], grads: list[torch.Tensor], rescale: bool, eps: float) -> None:
    """g <- g - (w.g / (w.w + eps)) w per tensor, in place; with `rescale`, back to the norm g had."""
    if rescale:
        norms_before = torch._foreach_norm(grads)
    squared_norms = torch._foreach_norm(params)
    torch._foreach_mul_(squared_norms, squared_norms)
    torch._foreach_add_(squared_norms, eps)
    coefficients = torch._foreach_div([flat_dot(w, g) for w, g in zip(params, grads)], squared_norms)
    torch._foreach_sub_(grads, torch._foreach_mul(params, coefficients))
    if rescale:
        norms_after = torch._foreach_norm(grads)
        torch._foreach_add_(norms_after, eps)
        torch._foreach_mul_(grads, torch._foreach_div(norms_before, norms_after))


class PerpGrad(Wrapper):
    """⊥Grad around `optimizer` (a Wrapper: the base's param groups, state and update rule)."""

    def __init__(self, optimizer: torch.optim.Optimizer, rescale: bool = True, eps: float = 1e-30):
        if getattr(optimizer, "second_order", False) or getattr(optimizer, "needs_closure", False):
            raise ConfigError(f"optimizer=perpgrad cannot wrap {type(optimizer).__name__} (second-order or "
                              "closure-driven: it recomputes the gradients itself); pick a first-order base")
        if eps <= 0:
            raise ConfigError(f"optimizer.eps={eps}: must be > 0 (it guards zero weights; official 1e-30)")
        super().__init__(optimizer)
        self.rescale, self.eps = rescale, eps

    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if params:
            project_out_weights(params, [p.grad for p in params], self.rescale, self.eps)
        return self.base.step()

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)
