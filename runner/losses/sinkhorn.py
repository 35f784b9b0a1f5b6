"""Entropic optimal transport (Sinkhorn) distance between distributions, iterated in log space.

Two forms:
- `sample`: per sample, OT between q and p over the classes with a ground cost between classes
  (`zero_one`: 1 off the diagonal, whose exact OT is total variation; `ordinal`: |i - j|, whose exact
  OT is the 1-D Wasserstein distance sum |CDF_q - CDF_p|). Memory N x K x K: for up to a few hundred classes.
- `batch`: SinKD (Cui et al. 2024): OT between the batch's N predicted distributions and its N targets
  as two uniform point clouds, the cost between points the L1 distance ||p_i - q_j||_1 (an N x N
  problem for any K). It matches the two sets, not sample i to target i, so it complements a pointwise
  loss (distillation) rather than training a classifier alone.
The value is <P, C> for the entropic plan P (Cuturi's Sinkhorn distance); gradients flow through the
unrolled iterations.
"""
from __future__ import annotations

import math

import torch

from runner.errors import ConfigError
from runner.losses.base import Loss

CHECK_EVERY = 10  # iterations between marginal checks when `tol` is set (each check is a host sync)


def sinkhorn_plan(cost: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, eps: float, iters: int,
                  tol: float | None = None) -> torch.Tensor:
    """The entropic OT plan between marginals a (..., n) and b (..., m) under cost (..., n, m).

    Log-domain Sinkhorn on scaled potentials u, v: P = exp(-C / eps + u_i + v_j). Stops after `iters`
    iterations, or earlier once the row marginals are within `tol` (L1, worst sample).
    """
    kernel = -cost / eps
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for step in range(1, iters + 1):
        u = log_a - torch.logsumexp(kernel + v.unsqueeze(-2), dim=-1)
        v = log_b - torch.logsumexp(kernel + u.unsqueeze(-1), dim=-2)
        if tol is not None and step % CHECK_EVERY == 0:
            rows = torch.logsumexp(kernel + u.unsqueeze(-1) + v.unsqueeze(-2), dim=-1).exp()
            if (rows - log_a.exp()).abs().sum(-1).max() < tol:
                break
    return (kernel + u.unsqueeze(-1) + v.unsqueeze(-2)).exp()


def ground_cost(name: str, num_classes: int, device: torch.device) -> torch.Tensor:
    if name == "zero_one":
        return 1 - torch.eye(num_classes, device=device)
    index = torch.arange(num_classes, device=device, dtype=torch.float32)
    return (index[:, None] - index[None, :]).abs()


class Sinkhorn(Loss):
    def __init__(self, form: str = "sample", cost: str = "zero_one", eps: float = 0.1, iters: int = 20,
                 tol: float | None = None, **base):
        super().__init__(**base)
        if form not in ("sample", "batch"):
            raise ConfigError(f"loss.form={form}: choose sample (OT over classes) or batch (SinKD)")
        if cost not in ("zero_one", "ordinal"):
            raise ConfigError(f"loss.cost={cost}: choose zero_one or ordinal (the ground cost between classes)")
        if eps <= 0 or iters < 1:
            raise ConfigError(f"loss.eps={eps}, loss.iters={iters}: need eps > 0 and iters >= 1")
        self.form, self.cost, self.eps, self.iters, self.tol = form, cost, eps, iters, tol
        self.per_sample = form == "sample"  # the batch form's rows add up to one OT cost between sets

    def divergence(self, log_q, log_p):
        """Per sample; in batch form row i carries N sum_j P_ij C_ij, so the mean is the batch OT cost."""
        if self.form == "batch":
            n = log_p.shape[0]
            cost = torch.cdist(log_p.exp(), log_q.exp(), p=1)
            uniform = torch.full((n,), -math.log(n), device=log_p.device, dtype=log_p.dtype)
            plan = sinkhorn_plan(cost, uniform, uniform, self.eps, self.iters, self.tol)
            return n * (plan * cost).sum(-1)
        cost = ground_cost(self.cost, log_p.shape[-1], log_p.device).to(log_p.dtype)
        plan = sinkhorn_plan(cost.expand(log_p.shape[0], -1, -1), log_q, log_p, self.eps, self.iters, self.tol)
        return (plan * cost).sum((-2, -1))
