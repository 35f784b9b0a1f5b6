"""Losses built for noisy labels. Each is defined for a label y; a probability target q takes the
expectation over q (comp-sum, Z-loss) or enters the margins directly (LDR), so smoothing and soft
targets work as with the divergences.
"""
from __future__ import annotations

import math

import torch

from runner.errors import ConfigError
from runner.losses.base import Loss, bounded_expm1


class CompSum(Loss):
    """Comp-sum losses (Mao, Mohri & Zhong 2023): Phi_tau(sum_{k != y} exp(h_k - h_y)) with
    Phi_tau(u) = ((1 + u)^(1 - tau) - 1) / (1 - tau), i.e. (1 - p_y^(tau - 1)) / (tau - 1):
    tau = 0 sum-exponential, 1 cross-entropy, (1, 2) generalized cross-entropy with q = tau - 1, 2 MAE.
    """

    def __init__(self, tau: float = 1.5, **base):
        super().__init__(**base)
        if tau < 0:
            raise ConfigError(f"loss.tau={tau}: comp-sum losses need tau >= 0 (1 is cross-entropy, 2 is MAE)")
        self.tau = tau

    def divergence(self, log_q, log_p):
        if self.tau == 1:
            per_class = -log_p
        else:  # expm1 keeps precision near tau = 1; tau < 1 grows like 1/p and continues linearly past the cap
            expm1 = torch.expm1 if self.tau > 1 else bounded_expm1
            per_class = -expm1((self.tau - 1) * log_p) / (self.tau - 1)
        return (log_q.exp() * per_class).sum(-1)


class LDR(Loss):
    """Label-distributionally robust loss, LDR-KL and its adaptive ALDR-KL (Zhu, Ying & Yang 2023):
        max_{w in simplex} sum_k w_k d_k - lam KL(w, uniform) = lam log(mean_k exp(d_k / lam)),
        d_k = margin (1 - q_k) + s_k - <q, s>,
    with scores s. `alpha` (> 1) turns on the adaptive per-instance lam of ALDR-KL: lam also maximises
    - alpha log K / (2 lam0) (lam - lam0)^2, whose optimum is the fixed point
    lam = lam0 (1 - KL(softmax(d / lam), uniform) / (alpha log K)), solved per sample without gradient
    (the gradient of a max at its maximiser needs none). `alpha: null` is LDR-KL with lam = lam0.
    `normalize` divides the centred scores by their mean absolute value as the official code does with
    the raw ones (centring first keeps the loss a function of p alone, as every loss here is).
    """

    def __init__(self, lam: float = 10.0, alpha: float | None = 2.0, margin: float = 0.1,
                 normalize: bool = True, iters: int = 10, **base):
        super().__init__(**base)
        if lam <= 0:
            raise ConfigError(f"loss.lam={lam}: the KL weight must be > 0")
        if alpha is not None and alpha <= 1:
            raise ConfigError(f"loss.alpha={alpha}: ALDR-KL needs alpha > 1 (keeps lam > 0), or null for LDR-KL")
        self.lam, self.alpha, self.margin, self.normalize, self.iters = lam, alpha, margin, normalize, iters

    def divergence(self, log_q, log_p):
        scores = log_p - log_p.mean(-1, keepdim=True)
        if self.normalize:
            scores = scores / scores.abs().mean(-1, keepdim=True).clamp_min(1e-12)
        q = log_q.exp()
        d = self.margin * (1 - q) + scores - (q * scores).sum(-1, keepdim=True)
        log_k = math.log(d.shape[-1])
        if self.alpha is None:
            return self.lam * (torch.logsumexp(d / self.lam, -1) - log_k)
        lam = self.adaptive_lambda(d.detach())
        penalty = self.alpha * log_k / (2 * self.lam) * (lam - self.lam).square()
        return lam * (torch.logsumexp(d / lam.unsqueeze(-1), -1) - log_k) - penalty

    @torch.no_grad()
    def adaptive_lambda(self, d: torch.Tensor) -> torch.Tensor:
        """The fixed point lam = lam0 (1 - KL(w_lam, U) / (alpha log K)), iterated from lam0 (monotone)."""
        log_k = math.log(d.shape[-1])
        lam = torch.full(d.shape[:-1], self.lam, device=d.device, dtype=d.dtype)
        for _ in range(self.iters):
            log_w = torch.log_softmax(d / lam.unsqueeze(-1), -1)
            kl_uniform = (log_w.exp() * log_w).sum(-1) + log_k
            lam = self.lam * (1 - kl_uniform / (self.alpha * log_k))
        return lam


class ZLoss(Loss):
    """Spherical Z-loss (de Brebisson & Vincent 2016): softplus(a (b - z_y)) / a on the z-normalised
    scores z = (s - mean s) / std s: invariant to shifts and scales of the logits (temperature too)."""

    def __init__(self, a: float = 1.0, b: float = 2.0, **base):
        super().__init__(**base)
        if a <= 0:
            raise ConfigError(f"loss.a={a}: the softplus steepness must be > 0")
        self.a, self.b = a, b

    def divergence(self, log_q, log_p):
        centred = log_p - log_p.mean(-1, keepdim=True)
        z = centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + 1e-12)
        per_class = torch.nn.functional.softplus(self.a * (self.b - z)) / self.a
        return (log_q.exp() * per_class).sum(-1)
