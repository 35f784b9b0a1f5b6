"""Mixup and CutMix on a device batch, producing probability targets (timm's `Mixup` in its default batch mode).

Definitions (Zhang et al. 2018, arXiv 1710.09412; Yun et al. 2019, arXiv 1905.04899; timm `data/mixup.py`):
per batch, with probability `prob`, draw lam ~ Beta(a, a) (a = `mixup`, or `cutmix` for a CutMix batch; with
both > 0 a batch is CutMix with probability `switch_prob`); the partner of image i is image N-1-i (the batch
reversed, as timm's `x.flip(0)`), and
    mixup:  x_i <- lam x_i + (1 - lam) x_{N-1-i}
    cutmix: a box of side int(H sqrt(1 - lam)) x int(W sqrt(1 - lam)) centred at a uniform pixel, clipped to the
            image (timm's `rand_bbox`), is pasted from the partner, and lam <- 1 - box area / (H W)
            (timm's `correct_lam`: the weight of each image is the area it really keeps)
    target: q_i = lam onehot(y_i) + (1 - lam) onehot(y_{N-1-i}), which sums to 1.
A batch that is not mixed (probability 1 - prob) keeps lam = 1: its targets are the one-hot labels.

Label smoothing is the loss's business (`loss.smoothing`): smoothing a mix of one-hot labels equals mixing the
smoothed labels (timm's `mixup_target`), since both are linear.

Replay: a batch's (lam, kind, box) are drawn on the host from a generator seeded by (seed, epoch, the batch's
first sample position in the epoch): no device sync, and a resumed run (or a batch size that changed) mixes each
batch exactly as before.
Under DDP each rank mixes its own shard of the global batch, with that batch's lambda (as timm's ranks do).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from runner.errors import require


@dataclass
class MixDraw:
    lam: float           # the images' own weight, after CutMix's area correction
    cutmix: bool
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right of the pasted box


def batch_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The draws of the batch that starts at `position` (samples into the epoch): a function of where it is."""
    return np.random.default_rng([seed, epoch, position])


def mixing_problems(mixup: float, cutmix: float) -> list[str]:
    return [f"dataset.{key}={value}: Beta(a, a) parameters are >= 0 (0 turns it off; timm's recipe: mixup 0.8, "
            f"cutmix 1.0)" for key, value in (("mixup", mixup), ("cutmix", cutmix)) if value < 0]


class Mixing:
    """timm's batch mode: `prob` of a batch being mixed, `switch_prob` of CutMix when both are on."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, prob: float = 1.0, switch_prob: float = 0.5):
        require(mixing_problems(mixup, cutmix))
        self.mixup, self.cutmix, self.prob, self.switch_prob = mixup, cutmix, prob, switch_prob

    @property
    def enabled(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0

    def draw(self, rng: np.random.Generator, height: int, width: int) -> MixDraw:
        """One batch's draws in timm's order: apply?, CutMix or mixup?, lam, then CutMix's box centre."""
        if rng.random() >= self.prob:
            return MixDraw(1.0, False)
        cutmix = self.cutmix > 0 and (self.mixup <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix if cutmix else self.mixup
        lam = float(rng.beta(alpha, alpha))
        if not cutmix:
            return MixDraw(lam, False)
        top, bottom, left, right = cutmix_box(lam, height, width, rng)
        return MixDraw(1.0 - (bottom - top) * (right - left) / (height * width), True, (top, bottom, left, right))

    def apply(self, images: torch.Tensor, labels: torch.Tensor, draw: MixDraw,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's mixed images (float, normalised) and probability targets (N, K), float32."""
        if draw.cutmix:
            top, bottom, left, right = draw.box
            images = images.clone()
            images[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
        elif draw.lam != 1.0:
            images = images * draw.lam + images.flip(0) * (1.0 - draw.lam)
        return images, mixed_targets(labels, num_classes, draw.lam)


def check(cfg) -> list[str]:
    """Mixed targets are probabilities: a distillation method that needs class indices cannot take them."""
    from runner.config import locate

    dataset, distill = cfg.get("dataset") or {}, cfg.get("distill")
    if not (dataset.get("mixup") or dataset.get("cutmix")) or not distill:
        return []
    try:
        reason = getattr(locate(distill._target_), "class_labels_reason", None)
    except Exception:  # noqa: BLE001 - an unimportable target is reported by its own check
        return []
    name = str(distill._target_).rsplit(".", 1)[-1]
    return [f"dataset.mixup/cutmix with distill={name.lower()}: {reason}, and mixed targets are probabilities; "
            f"set dataset.mixup=0 dataset.cutmix=0"] if reason else []


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's `rand_bbox`: sides int(H sqrt(1 - lam)), int(W sqrt(1 - lam)), a uniform centre, clipped."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(top), int(bottom), int(left), int(right)


def mixed_targets(labels: torch.Tensor, num_classes: int, lam: float) -> torch.Tensor:
    """lam onehot(y) + (1 - lam) onehot(y reversed), built with scatter (no host check of the labels)."""
    targets = torch.zeros(len(labels), num_classes, device=labels.device)
    targets.scatter_(1, labels[:, None], lam)
    return targets.scatter_add_(1, labels.flip(0)[:, None], torch.full_like(targets[:, :1], 1.0 - lam))
