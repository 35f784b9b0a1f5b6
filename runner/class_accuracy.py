"""Accuracy per class, and the long-tailed summaries of it, over one evaluation pass (runner/evaluation.py).

    a_k              correct_k / count_k over the split's samples of class k   (`<split>/class_acc1/<k>`)
    balanced         mean of a_k over the classes present in the split          (`<split>/balanced_acc1`;
                     scikit-learn's `balanced_accuracy_score`, the test's oracle)
    many/medium/few  mean of a_k over the classes with > 100, 20..100 and < 20 training samples
                     (`<split>/many_acc1`, `medium_acc1`, `few_acc1`; the thresholds and the mean of per-class
                     accuracies of Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
                     official code zhmiao/OpenLongTailRecognition-OLTR `utils.py shot_acc`)

Balanced accuracy is in every evaluation; the per-class accuracies and the shot groups in those of long-tailed
runs (`dataset.imbalance.ratio` > 1: the training class counts are given). A group with no class is left out.
Counts are summed over ranks before dividing, as every evaluation metric.
"""
from __future__ import annotations

import torch

from runner import distributed

MANY_SHOT, FEW_SHOT = 100, 20  # training samples: many > 100, few < 20, medium in between


class ClassAccuracy:
    """Hits and samples per class, accumulated on the device batch by batch."""

    def __init__(self, num_classes: int, device: torch.device):
        self.counts = torch.zeros(2, num_classes, device=device)  # correct, samples

    def add(self, labels: torch.Tensor, correct: torch.Tensor) -> None:
        self.counts[0].index_add_(0, labels, correct.float())
        self.counts[1].index_add_(0, labels, torch.ones_like(labels, dtype=self.counts.dtype))

    def metrics(self, train_counts: torch.Tensor | None = None) -> dict:
        """The balanced accuracy, and with the training class counts the per-class and shot-group accuracies
        (unprefixed: the evaluation names them `<split>/...`)."""
        correct, samples = distributed.all_reduce_sum(self.counts).cpu().double()
        present = samples > 0
        accuracy = correct / samples.clamp_min(1)
        result = {"balanced_acc1": accuracy[present].mean().item()}
        if train_counts is None:
            return result
        result |= {f"class_acc1/{k}": accuracy[k].item() for k in range(len(accuracy)) if present[k]}
        train_counts = train_counts.cpu()
        groups = {"many": train_counts > MANY_SHOT, "few": train_counts < FEW_SHOT}
        groups["medium"] = ~(groups["many"] | groups["few"])
        for name, members in groups.items():
            if (members & present).any():
                result[f"{name}_acc1"] = accuracy[members & present].mean().item()
        return result
