"""Evaluation as a function: a model's loss, NLL, top-1/top-5 accuracy and 15-bin ECE over one named split.

`evaluate(model, batches, ...)` returns `{"<split>/loss": ..., "<split>/nll": ..., "<split>/acc1": ...,
"<split>/acc5": ..., "<split>/ece": ...}`; the train loop calls it on the validation split, methods on
their own models (a teacher, an EMA), and any other split (a held-out part of the training data,
`holdout/...`) is one more call with its own loader. Every rank evaluates its own shard and the sums are
reduced before dividing, so the numbers equal a one-process evaluation whatever the world size. A new
calibration metric is one more accumulator (a row of `sums` or a histogram like `bins`) and one more key.
Accuracy per class and its long-tailed summaries (balanced, many/medium/few-shot) are runner/class_accuracy.py's.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from runner import distributed
from runner.class_accuracy import ClassAccuracy
from runner.tta import tta_logits

ECE_BINS = 15


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches, loss_fn: Callable, autocast, device: torch.device, tta: int = 0,
             split: str = "val", class_counts: torch.Tensor | None = None) -> dict:
    """Metrics of `model` (in eval mode, restored after) over `batches.epoch(0)` of (images, labels, index);
    with the training set's `class_counts` (a long-tailed run) also the per-class and shot-group accuracies."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, device=device)  # loss, nll, top1, top5, count
    bins = torch.zeros(3, ECE_BINS, device=device)  # count, confidence, accuracy
    per_class = None
    for images, labels, _ in batches.epoch(0):
        with autocast():
            logits = tta_logits(model, images, tta)
        per_class = per_class or ClassAccuracy(logits.shape[-1], device)
        loss = loss_fn(logits, labels) * len(labels)
        nll = F.cross_entropy(logits, labels, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top5 == labels[:, None]
        per_class.add(labels, hits[:, 0])
        sums += torch.stack([loss, nll, hits[:, 0].sum(), hits.any(-1).sum(), torch.tensor(len(labels), device=device)])
        confidence = logits.softmax(-1).max(-1).values
        # bin b holds confidences in [b/15, (b+1)/15); the clamp keeps 1.0 and NaN (a diverged model) in range
        bin_index = (confidence * ECE_BINS).long().clamp_(0, ECE_BINS - 1)
        for row, values in enumerate((torch.ones_like(confidence), confidence, hits[:, 0].float())):
            bins[row].index_add_(0, bin_index, values)
    model.train(was_training)
    distributed.all_reduce_sum(sums)  # every rank evaluated its own shard: sum counts, never average rates
    distributed.all_reduce_sum(bins)
    loss, nll, top1, top5, count = sums.tolist()
    ece = ((bins[1] - bins[2]).abs().sum() / count).item()
    return {f"{split}/loss": loss / count, f"{split}/nll": nll / count, f"{split}/acc1": top1 / count,
            f"{split}/acc5": top5 / count, f"{split}/ece": ece, **per_class.metrics(split, class_counts)}
