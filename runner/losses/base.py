"""What every loss shares: float32 log-probabilities with a temperature, the target distribution q with
label smoothing, and the optional log-partition (z_reg) penalty.

A loss is called as `loss(logits, target)` (the batch mean) or `loss(logits, target, reduction="none")` (one
value per sample: what per-sample weighting and hard-sample selection read); `target` holds class indices (N,)
or probability vectors (N, K). Its core is `divergence(log_q, log_p) -> (N,)`, one value per sample between the
target q and the model's p = softmax(logits / temperature), both given as log-probabilities. Distillation calls it with a
teacher's log-probabilities as log_q. Everything runs in float32 from log-softmax (never the log of a
softmax) with autocast off, so it stays finite under bf16 autocast and for extreme logits.

Label smoothing (`smoothing` s: q = (1 - s) onehot + s / K) belongs to label targets only: class indices,
and a mix of one-hot labels (mixup, cutmix) when the caller says so with `loss(logits, q, from_labels=True)`
(smoothing the mix equals mixing the smoothed labels: it is affine). Probability vectors (a teacher's, a
model's own past predictions) are used as given. A divergence that is infinite where q = 0 < p (reverse KL,
Neyman chi^2, alpha <= 0, f with f(0) infinite) says so in `needs_full_support(**options)`; the pre-flight
refuses it with smoothing 0 where the run's objective gives it labels (`validate_config`), and accepts it
where its targets are probabilities (distillation). Called on one-hot labels anyway (evaluation's val/loss), it returns
its true value, inf.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from runner.errors import ConfigError
from runner.losses.stablemax import NORMALIZERS, log_stablemax

# Divergences that grow like exp(log-ratio) (Pearson/Neyman chi^2, alpha outside [0, 1], comp-sum with
# tau < 1) continue linearly past exp(MAX_LOG) ~ 4.9e8: finite in float32, gradient still pointing home.
MAX_LOG = 20.0


def target_distribution(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """q as a (N, K) float matrix (at least float32): one-hot from indices (smoothed towards uniform) or the given vectors."""
    q = target if target.ndim == 2 else F.one_hot(target, num_classes)
    q = q.to(torch.promote_types(q.dtype, torch.float32))  # float64 stays float64 (reference checks)
    return q * (1 - smoothing) + smoothing / num_classes if smoothing else q


def bounded_expm1(x: torch.Tensor, cap: float = MAX_LOG) -> torch.Tensor:
    """expm1(x) up to x = cap, continued by its tangent beyond (value and slope match at the cap)."""
    return torch.where(x <= cap, torch.expm1(x.clamp(max=cap)), math.exp(cap) * (1 + x - cap) - 1)


def kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_k a_k (log a_k - log b_k) = KL(a || b) per row, with 0 log 0 = 0 where a_k = 0."""
    support = log_a > -math.inf
    diff = torch.where(support, log_a, 0.0) - log_b
    return torch.where(support, log_a.exp() * diff, 0.0).sum(-1)


class Loss(nn.Module):
    """Base class: subclasses define `divergence(log_q, log_p)` (per sample) or override `sample_losses`."""
    per_sample = True  # False for a set-level loss whose rows only mean something averaged (SinKD's batch OT)

    def __init__(self, temperature: float = 1.0, smoothing: float = 0.0, z_reg: float = 0.0,
                 normalizer: str = "softmax",
                 search_space: dict | None = None):  # divrun-tune's ranges (runner/search_space.py): not the loss's
        super().__init__()
        if normalizer not in NORMALIZERS:
            raise ConfigError(f"loss.normalizer={normalizer}: choose softmax or stablemax")
        if temperature <= 0:
            raise ConfigError(f"loss.temperature={temperature}: must be > 0 (1 is plain softmax)")
        if not 0 <= smoothing < 1:
            raise ConfigError(f"loss.smoothing={smoothing}: must be in [0, 1)")
        if z_reg < 0:
            raise ConfigError(f"loss.z_reg={z_reg}: must be >= 0 (1e-4 is the usual log-partition penalty)")
        self.temperature, self.smoothing, self.z_reg, self.normalizer = temperature, smoothing, z_reg, normalizer

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_labels: bool | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """The batch mean (`reduction="mean"`) or the (N,) per-sample values (`"none"`). `from_labels`:
        whether `target` comes from labels and is smoothed; default: class indices are, probability vectors
        are not. Pass True for a mix of one-hot labels (mixup, cutmix)."""
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            smoothing = self.target_smoothing(target, from_labels)
            loss = self.sample_losses(logits / self.temperature, target, smoothing, reduction)
            if self.z_reg:  # z_reg * log(Z)^2 keeps the softmax normaliser near 1 (PaLM's z-loss)
                penalty = self.z_reg * torch.logsumexp(logits, -1).square()
                loss = loss + (penalty.mean() if reduction == "mean" else penalty)
            return loss

    def target_smoothing(self, target: torch.Tensor, from_labels: bool | None = None) -> float:
        """The smoothing `target` gets: the loss's own for labels, none for probability vectors."""
        return self.smoothing if (target.ndim == 1 if from_labels is None else from_labels) else 0.0

    def sample_losses(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float,
                      reduction: str = "mean") -> torch.Tensor:
        """Per-sample values (`reduction="none"`) or their mean; `logits` are already divided by the temperature."""
        log_p = F.log_softmax(self.scores(logits), dim=-1)
        losses = self.divergence(self.log_target(target, logits.shape[-1], log_p.dtype, smoothing), log_p)
        return losses.mean() if reduction == "mean" else losses

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """What log_softmax turns into the model's log p: the logits, or log StableMax(logits), which
        log_softmax leaves as they are (they are already normalised), so softmax-based kernels serve both."""
        return log_stablemax(logits) if self.normalizer == "stablemax" else logits

    def log_target(self, target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32,
                   smoothing: float | None = None) -> torch.Tensor:
        """log q (N, K): -inf where q is zero. Class indices are scattered straight into log space.
        `smoothing` None: as `target_smoothing` decides for this kind of target."""
        smoothing = self.target_smoothing(target) if smoothing is None else smoothing
        if target.ndim == 2:
            return target_distribution(target, num_classes, smoothing).log()
        off, on = smoothing / num_classes, 1 - smoothing + smoothing / num_classes
        log_q = torch.full((len(target), num_classes), math.log(off) if off else -math.inf, dtype=dtype,
                           device=target.device)
        return log_q.scatter_(1, target.unsqueeze(1), math.log(on))

    def divergence(self, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} defines no per-sample divergence")

    @classmethod
    def needs_full_support(cls, **options) -> str | None:
        """With these options: the divergence's name if it is infinite where q = 0 < p, else None."""
        return None

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        """One-hot labels have q = 0 off the label: where the training objective gives the loss labels (the
        distill method's `loss_gets_labels`; no distill group: plain training), a divergence that needs q > 0
        needs them smoothed. (The constructor's own rules run when the pre-flight builds the loss.)"""
        from runner.config import locate
        from runner.validate import options as options_of

        distill = cfg.get("distill")
        try:
            if distill and not getattr(locate(distill._target_), "loss_gets_labels", True):
                return []
            options = options_of(cfg.loss)
            what = cls.needs_full_support(**options)
        except Exception:  # noqa: BLE001 - an unimportable target or a bad option: reported by its own check
            return []
        smoothing = options.get("smoothing", 0.0)
        if what and smoothing <= 0:
            return [f"loss.smoothing={smoothing}: {what} needs q > 0 wherever p > 0, which one-hot labels break; "
                    f"set loss.smoothing > 0 (e.g. loss.smoothing=0.1)"]
        return []
