"""Evaluation as a function: a model's loss, NLL, top-1/top-5 accuracy, ECE and AURC over one named split.

`evaluate(model, batches, ...)` returns `{"<split>/loss": ..., "<split>/nll": ..., "<split>/acc1": ...,
"<split>/acc5": ..., "<split>/ece": ..., "<split>/aurc": ..., "<split>/eaurc": ...}`; the train loop calls it
on the validation split, methods on their own models (a teacher, an EMA), and any other split (a held-out part
of the training data, `holdout/...`) is one more call with its own loader. `evaluation_pass` returns the pass
itself (`SplitEvaluation`: its bins for a reliability diagram, its logits for temperature scaling). Every rank
evaluates its own shard; sums are reduced and per-sample values gathered before anything is divided, so the
numbers equal a one-process evaluation whatever the world size. The probabilities are the model's own: the
loss's normaliser (softmax, or StableMax with `loss.normalizer=stablemax`). The metrics' definitions (ECE with
`eval.ece_bins` right-closed bins, AURC, E-AURC) and their sources are in runner/calibration.py.
Accuracy per class and its long-tailed summaries (balanced, many/medium/few-shot) are runner/class_accuracy.py's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from runner import distributed
from runner.calibration import aurc, binned, ece_from_bins, log_probs
from runner.class_accuracy import ClassAccuracy
from runner.tta import tta_logits

ECE_BINS = 15


class SplitEvaluation:
    """The metrics of one pass over a split, batch by batch: sums and confidence bins stay on the device; the
    per-sample confidence and correctness (AURC) and, with `keep_logits`, the logits (temperature scaling) are
    kept and gathered from every process at the end. `normalize` is the loss's map to scores whose log_softmax
    is the model's log p (StableMax); None: the softmax."""

    def __init__(self, bins: int, device: torch.device, normalize=None, keep_logits: bool = False,
                 class_counts: torch.Tensor | None = None):
        self.bins, self.normalize, self.keep_logits, self.class_counts = bins, normalize, keep_logits, class_counts
        self.per_class = None  # a ClassAccuracy once the first batch says how many classes
        self.sums = torch.zeros(5, device=device)  # loss, nll, top1, top5, count
        self.stats = torch.zeros(3, bins, device=device)
        self.confidence, self.correct, self.logits, self.labels = [], [], [], []

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        """One batch: its logits, labels and the run's loss summed over it."""
        log_p = log_probs(logits, self.normalize)
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top5 == labels[:, None]
        nll = F.nll_loss(log_p, labels, reduction="sum")
        self.sums += torch.stack([loss_sum.float(), nll, hits[:, 0].sum(), hits.any(-1).sum(),
                                  torch.tensor(len(labels), device=logits.device)])
        confidence = log_p.max(-1).values.exp()
        self.stats += binned(confidence, hits[:, 0], self.bins)
        self.per_class = self.per_class or ClassAccuracy(logits.shape[-1], logits.device)
        self.per_class.add(labels, hits[:, 0])
        self.confidence.append(confidence)
        self.correct.append(hits[:, 0])
        if self.keep_logits:
            self.logits.append(logits.float())
            self.labels.append(labels)

    def finish(self) -> dict:
        """Metrics over every process's samples (the one host read of the pass): loss, nll, acc1, acc5, ece,
        aurc, eaurc, balanced_acc1 (and, with the training set's class counts, the per-class and shot-group
        accuracies)."""
        distributed.all_reduce_sum(self.sums)  # sum counts, never average rates
        distributed.all_reduce_sum(self.stats)
        self.confidence = distributed.all_gather_cat(torch.cat(self.confidence))
        self.correct = distributed.all_gather_cat(torch.cat(self.correct))
        if self.keep_logits:
            self.logits = distributed.all_gather_cat(torch.cat(self.logits))
            self.labels = distributed.all_gather_cat(torch.cat(self.labels))
        loss, nll, top1, top5, count = self.sums.tolist()
        value, excess = aurc(self.confidence, self.correct)
        return {"loss": loss / count, "nll": nll / count, "acc1": top1 / count, "acc5": top5 / count,
                "ece": ece_from_bins(self.stats).item(), "aurc": value, "eaurc": excess,
                **self.per_class.metrics(self.class_counts)}


@torch.no_grad()
def evaluation_pass(model: torch.nn.Module, batches, loss_fn: Callable, autocast, device: torch.device, tta: int = 0,
                    bins: int = ECE_BINS, class_counts: torch.Tensor | None = None,
                    keep_logits: bool = False) -> tuple[SplitEvaluation, dict]:
    """One pass of `model` (in eval mode, restored after) over `batches.epoch(0)` of (images, labels, index):
    the pass and its metrics (unprefixed); with the training set's `class_counts` (a long-tailed run) the
    per-class and shot-group accuracies too."""
    was_training = model.training
    model.eval()
    evaluation = SplitEvaluation(bins, device, getattr(loss_fn, "scores", None), keep_logits, class_counts)
    for images, labels, _ in batches.epoch(0):
        with autocast():
            logits = tta_logits(model, images, tta)
        evaluation.add(logits, labels, loss_fn(logits, labels) * len(labels))
    model.train(was_training)
    return evaluation, evaluation.finish()


def evaluate(model: torch.nn.Module, batches, loss_fn: Callable, autocast, device: torch.device, tta: int = 0,
             split: str = "val", bins: int = ECE_BINS, class_counts: torch.Tensor | None = None) -> dict:
    """The metrics of one pass, named `<split>/<metric>`."""
    _, metrics = evaluation_pass(model, batches, loss_fn, autocast, device, tta, bins, class_counts)
    return {f"{split}/{name}": value for name, value in metrics.items()}
