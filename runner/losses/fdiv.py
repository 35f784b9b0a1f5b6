"""f-divergences D_f(q || p) = sum_k p_k f(q_k / p_k) between the target q and the model's p.

Each named member has a closed form evaluated in log space (exact for one-hot q and extreme logits);
`FDivergence` takes any generator f from `runner.losses.generators`, so a new f-divergence is one
function there.
"""
from __future__ import annotations

import inspect
import math

import torch

from runner.errors import ConfigError
from runner.losses import generators
from runner.losses.base import MAX_LOG, Loss, bounded_expm1, kl


def alpha_divergence(log_q: torch.Tensor, log_p: torch.Tensor, alpha: float) -> torch.Tensor:
    """Amari alpha-divergence (1 - sum q^a p^(1-a)) / (a (1 - a)); KL(q||p) at a = 1, KL(p||q) at a = 0.

    As expm1(logsumexp(a log q + (1-a) log p)) / (a (a - 1)): no cancellation near q = p, and the
    unbounded side (a > 1 or a < 0) continues linearly past exp(MAX_LOG).
    """
    if alpha == 1:
        return kl(log_q, log_p)
    if alpha == 0:
        return kl(log_p, log_q)
    log_s = torch.logsumexp(alpha * log_q + (1 - alpha) * log_p, dim=-1)
    return bounded_expm1(log_s) / (alpha * (alpha - 1))


class KL(Loss):
    """KL(q || p) = sum q log(q / p): forward, mass-covering; equals cross-entropy minus H(q)."""

    def divergence(self, log_q, log_p):
        return kl(log_q, log_p)


class ReverseKL(Loss):
    """KL(p || q) = sum p log(p / q): reverse, mode-seeking; infinite where q = 0 < p."""

    @classmethod
    def needs_full_support(cls, **options) -> str | None:
        return "reverse KL"

    def divergence(self, log_q, log_p):
        return kl(log_p, log_q)


class JensenShannon(Loss):
    """pi KL(q || m) + (1 - pi) KL(p || m), m = pi q + (1 - pi) p; bounded by H(pi) <= log 2.

    `normalize` divides by -(1 - pi) log(1 - pi) (Englesson & Azizpour 2021): the loss then tends to
    cross-entropy as pi -> 0 and to MAE / 2 as pi -> 1.
    """

    def __init__(self, pi: float = 0.5, normalize: bool = False, **base):
        super().__init__(**base)
        if not 0 < pi < 1:
            raise ConfigError(f"loss.pi={pi}: the weight of q in the mixture must be in (0, 1)")
        self.pi = pi
        self.scale = -1 / ((1 - pi) * math.log(1 - pi)) if normalize else 1.0

    def divergence(self, log_q, log_p):
        log_m = torch.logaddexp(math.log(self.pi) + log_q, math.log(1 - self.pi) + log_p)
        return self.scale * (self.pi * kl(log_q, log_m) + (1 - self.pi) * kl(log_p, log_m))


class TotalVariation(Loss):
    """TV(q, p) = sum |q - p| / 2 in [0, 1]; for one-hot q it is 1 - p_y (MAE / 2)."""

    def divergence(self, log_q, log_p):
        return 0.5 * (log_q.exp() - log_p.exp()).abs().sum(-1)


class Hellinger(Loss):
    """Squared Hellinger distance H^2 = sum (sqrt q - sqrt p)^2 / 2 = 1 - sum sqrt(q p), in [0, 1]."""

    def divergence(self, log_q, log_p):
        return alpha_divergence(log_q, log_p, 0.5) / 4


class ChiSquare(Loss):
    """Pearson chi^2(q || p) = sum (q - p)^2 / p or Neyman chi^2 = sum (q - p)^2 / q (needs q > 0)."""

    def __init__(self, form: str = "pearson", **base):
        super().__init__(**base)
        if form not in ("pearson", "neyman"):
            raise ConfigError(f"loss.form={form}: choose pearson or neyman")
        self.alpha = 2.0 if form == "pearson" else -1.0  # chi^2 = 2 D_alpha at alpha = 2 / -1

    @classmethod
    def needs_full_support(cls, form: str = "pearson", **options) -> str | None:
        return "Neyman chi^2" if form == "neyman" else None

    def divergence(self, log_q, log_p):
        return 2 * alpha_divergence(log_q, log_p, self.alpha)


class Alpha(Loss):
    """Amari alpha-divergence: KL(q || p) at alpha = 1, KL(p || q) at alpha = 0, 4 H^2 at 1/2."""

    def __init__(self, alpha: float = 0.5, **base):
        super().__init__(**base)
        self.alpha = alpha

    @classmethod
    def needs_full_support(cls, alpha: float = 0.5, **options) -> str | None:
        return f"the alpha-divergence with alpha={alpha} <= 0" if alpha <= 0 else None

    def divergence(self, log_q, log_p):
        return alpha_divergence(log_q, log_p, self.alpha)


class FDivergence(Loss):
    """sum_k p_k f(q_k / p_k) for a generator f named in `runner.losses.generators` (convex, f(1) = 0).

    The ratio is taken in log space and clipped to [-80, MAX_LOG] (t = 0 becomes e^-80, so f'(t) stays
    finite in float32 while f(t) equals f(0) to ~e^-40 even for sqrt-like f); each term is written as
    p f(t) where q <= p and q f(t) / t where q > p, so neither side underflows to 0 * inf.
    """

    def __init__(self, generator: str = "jeffreys", **base):
        super().__init__(**base)
        names = [n for n, fn in inspect.getmembers(generators, inspect.isfunction) if fn.__module__ == generators.__name__]
        if generator not in names:
            raise ConfigError(f"loss.generator={generator}: choose one of {', '.join(names)} "
                              f"(or add a function to runner/losses/generators.py)")
        self.f = getattr(generators, generator)
        at_one = generator_at(generator, 1.0)
        if abs(at_one) > 1e-12:
            raise ConfigError(f"loss.generator={generator}: f(1) = {at_one}, an f-divergence needs f(1) = 0")

    @classmethod
    def needs_full_support(cls, generator: str = "jeffreys", **options) -> str | None:
        infinite = not math.isfinite(generator_at(generator, 0.0))
        return f"the f-divergence with generator {generator} (f(0) is infinite)" if infinite else None

    def divergence(self, log_q, log_p):
        u = (log_q - log_p).clamp(-80.0, MAX_LOG)
        t, q_larger = u.exp(), u > 0
        f_t = self.f(t)
        return torch.where(q_larger, log_q.exp() * f_t / t, log_p.exp() * f_t).sum(-1)


def generator_at(name: str, t: float) -> float:
    """f(t) of the generator `name` of runner/losses/generators.py, in float64."""
    return getattr(generators, name)(torch.tensor(t, dtype=torch.float64)).item()
