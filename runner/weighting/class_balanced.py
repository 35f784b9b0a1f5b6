"""Class-balanced loss weights: the "upweight" side of long-tailed training. A sample of class k (n_k training
samples of N) has the multiplier w_k of its class, and the loss is mean_i w_{y_i} l_i.

    inverse_frequency  w_k proportional to 1 / n_k
    effective_number   w_k proportional to (1 - beta) / (1 - beta^n_k): the inverse "effective number of
                       samples" E_n = (1 - beta^n) / (1 - beta) (Cui, Jia, Lin, Song & Belongie, "Class-Balanced
                       Loss Based on Effective Number of Samples", CVPR 2019, eq. 3 and 5; official code
                       richardaecn/class-balanced-loss `cifar_main.py`). beta = 0 is the plain mean, beta -> 1
                       inverse frequency; 0.9999 is their (and LDAM-DRW's) CIFAR choice.
    temperature        w_k proportional to q_k(tau) / (n_k / N), q_k(tau) proportional to n_k^(1/tau): the
                       Scalarization that matches Temperature Sampling at temperature tau in expectation (Li et al.,
                       "Upsample or Upweight?", NAACL 2025: equal under full-batch gradient descent); tau -> inf
                       (null) is inverse frequency, tau = 1 the plain mean.

`normalize` sets the scale: `classes` (Cui et al.'s, the default) makes sum_k w_k = K, so the loss is the
official code's softmax cross-entropy with those weights averaged over the batch (TF's SUM_BY_NONZERO_WEIGHTS;
torch's `CrossEntropyLoss(weight=...)` would divide by sum_i w_{y_i} instead); `samples` makes
sum_k (n_k / N) w_k = 1, the mean multiplier over the training set, so the weighted loss has the scale of the
temperature sampler it mirrors (compare `sampler=class_balanced` at the same temperature). Classes without
training samples get no weight. Under DDP every rank weighs its own samples (the weights depend on labels
only), so the ranks' mean equals one process's.
"""
from __future__ import annotations

import torch

from runner.data.samplers import check_sampling_temperature, class_rates, exponent
from runner.errors import ConfigError
from runner.weighting import Weighting, per_class

SCHEMES = ("inverse_frequency", "effective_number", "temperature")
NORMALIZATIONS = ("classes", "samples")


def class_weights(counts: torch.Tensor, scheme: str = "inverse_frequency", beta: float = 0.9999,
                  temperature: float | None = None, normalize: str = "classes") -> torch.Tensor:
    """w_k for classes of `counts` samples each (see the module's docstring), float64."""
    counts = counts.double()
    present = counts > 0
    if scheme == "effective_number":
        raw = (1 - beta) / (1 - beta ** counts.clamp_min(1))
    elif scheme == "temperature":
        raw = class_rates(counts, exponent(temperature)) / (counts.clamp_min(1) / counts.sum())
    else:
        raw = 1 / counts.clamp_min(1)
    raw = torch.where(present, raw, torch.zeros((), dtype=raw.dtype))
    if normalize == "samples":
        return raw / (raw * counts / counts.sum()).sum()
    return raw / raw.sum() * present.sum()


class ClassBalanced(Weighting):
    name, active = "class_balanced", True

    def __init__(self, scheme: str = "inverse_frequency", beta: float = 0.9999, temperature: float | None = None,
                 normalize: str = "classes"):
        if scheme not in SCHEMES:
            raise ConfigError(f"weighting.scheme={scheme}: choose one of {', '.join(SCHEMES)}")
        if not 0 <= beta < 1:
            raise ConfigError(f"weighting.beta={beta}: the effective number needs 0 <= beta < 1 (0.9999 for CIFAR)")
        check_sampling_temperature(temperature, "weighting.temperature")
        if normalize not in NORMALIZATIONS:
            raise ConfigError(f"weighting.normalize={normalize}: choose classes (sum_k w_k = K) or samples "
                              f"(mean weight 1 over the training set)")
        self.scheme, self.beta, self.temperature, self.normalize = scheme, beta, temperature, normalize

    def setup(self, context) -> None:
        super().setup(context)
        weights = class_weights(context.data.class_counts("weighting=class_balanced"), self.scheme, self.beta, self.temperature, self.normalize)
        self.table = weights.float().to(context.device)

    def multipliers(self, losses, labels):
        return per_class(self.table, labels)
