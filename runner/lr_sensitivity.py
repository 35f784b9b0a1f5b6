"""Learning-rate sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322, Section 2.2): how far the final loss rises away from the best lr of a sweep,

    LR sensitivity = E_{eta in [a, b]} [ min(l(A(eta)), l_0) - l* ],      l* = min_{eta in [a, b]} l(A(eta)),

with l(A(eta)) the final loss of the run trained at lr eta, l_0 the loss at initialisation (a run that diverged
or ended worse than it started counts as l_0) and the expectation over the sweep's lrs, which the paper spaces
evenly in log scale: the mean over the grid's points. With several seeds per lr the capped losses are averaged
per lr first. divrun's l_0 is each run's `initial_train_loss` (the loss of its first step, before any update).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass


@dataclass(frozen=True)
class Sensitivity:
    value: float  # E[min(l, l_0) - l*] over the lr grid
    best_lr: float
    best_loss: float  # l*
    lrs: int  # grid points
    runs: int


def capped(final_loss: float | None, initial_loss: float) -> float:
    """min(l, l_0), with a missing or non-finite final loss (a diverged run) as l_0."""
    if final_loss is None or not math.isfinite(final_loss):
        return initial_loss
    return min(final_loss, initial_loss)


def lr_sensitivity(lrs: list[float], final_losses: list[float | None], initial_losses: list[float]) -> Sensitivity:
    """The sensitivity of one group of runs (one entry per run: its lr, final and initial loss)."""
    if not lrs:
        raise ValueError("no runs to compute an lr sensitivity from")
    by_lr: dict[float, list[float]] = defaultdict(list)
    for lr, final, initial in zip(lrs, final_losses, initial_losses, strict=True):
        by_lr[float(lr)].append(capped(final, initial))
    means = {lr: sum(values) / len(values) for lr, values in by_lr.items()}
    best_lr = min(means, key=means.get)
    best = means[best_lr]
    value = sum(loss - best for loss in means.values()) / len(means)
    return Sensitivity(value, best_lr, best, len(means), len(lrs))
