"""val/nll and val/ece (15 bins) from runner.evaluation.evaluate against a plain per-sample reference."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from runner.losses.ce import CrossEntropy
from runner.evaluation import evaluate


class FixedLoader:
    """Yields precomputed logits as 'images' in batches, like the loaders' (images, labels, index)."""

    def __init__(self, logits, labels, batch_size):
        self.logits, self.labels, self.batch_size = logits, labels, batch_size

    def epoch(self, epoch=0, start_batch=0):
        for start in range(0, len(self.labels), self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, len(self.labels)))
            yield self.logits[index], self.labels[index], index


def reference_metrics(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Guo et al. 2017: ECE = sum_b |B_b| / n * |acc(B_b) - conf(B_b)| over equal-width confidence bins."""
    shifted = logits - logits.max(1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    nll = -np.log(probs[np.arange(len(labels)), labels]).mean()
    confidence, prediction = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = (confidence >= lo) & ((confidence < hi) if b < bins - 1 else (confidence <= hi))
        if members.any():
            ece += members.mean() * abs((prediction[members] == labels[members]).mean() - confidence[members].mean())
    return {"val/nll": nll, "val/ece": ece, "val/acc1": (prediction == labels).mean()}


def test_evaluate_nll_and_ece_match_the_plain_reference():
    gen = torch.Generator().manual_seed(0)
    n, k = 1000, 10
    labels = torch.randint(0, k, (n,), generator=gen)
    # a mix of confident-right, confident-wrong and unsure predictions, so every bin is used
    logits = torch.randn(n, k, generator=gen) * torch.rand(n, 1, generator=gen) * 6
    logits[torch.arange(n), labels] += torch.rand(n, generator=gen) * 4
    metrics = evaluate(torch.nn.Identity(), FixedLoader(logits, labels, batch_size=128), CrossEntropy(),
                       contextlib.nullcontext, torch.device("cpu"))
    expected = reference_metrics(logits.double().numpy(), labels.numpy())
    for key, value in expected.items():
        assert abs(metrics[key] - value) < 1e-5, (key, metrics[key], value)
    assert metrics["val/ece"] > 0.01  # a non-trivial miscalibration was measured
    assert abs(metrics["val/loss"] - metrics["val/nll"]) < 1e-5  # CE's val/loss is the NLL


def test_evaluate_survives_a_diverged_model():
    logits = torch.full((8, 4), float("nan"))
    metrics = evaluate(torch.nn.Identity(), FixedLoader(logits, torch.zeros(8, dtype=torch.long), 4), CrossEntropy(),
                       contextlib.nullcontext, torch.device("cpu"))
    assert np.isnan(metrics["val/nll"]) and np.isnan(metrics["val/ece"])


def test_evaluate_takes_the_bins_and_reports_aurc():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (500,), generator=gen)
    logits = torch.randn(500, 10, generator=gen) * 3
    metrics = evaluate(torch.nn.Identity(), FixedLoader(logits, labels, batch_size=64), CrossEntropy(),
                       contextlib.nullcontext, torch.device("cpu"), bins=10)
    assert abs(metrics["val/ece"] - reference_metrics(logits.double().numpy(), labels.numpy(), bins=10)["val/ece"]) < 1e-5
    assert 0 < metrics["val/eaurc"] < metrics["val/aurc"] < 1
