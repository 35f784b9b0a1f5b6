"""Progressive self-knowledge distillation, PS-KD (Kim et al., ICCV 2021; lgcnsai/PS-KD-Pytorch).

The model is its own teacher: in epoch e (0-based, of E) each sample's target is

    q = (1 - a_e) * onehot(y) + a_e * p_prev(x),        a_e = alpha_T * (e + 1) / E

with p_prev the softmax of the model's own outputs for that sample in the previous epoch (its training
forward pass, kept in a per-sample memory addressed by the loaders' sample indices; a sample not seen yet
uses its one-hot label, as the reference does in epoch 0). The loss is the run's `loss` against q (`ce`:
the reference's soft-target cross-entropy); `loss.smoothing` smooths the label part (and the unseen samples'
fallback), never p_prev. The memory (N x classes, float32, on the training device) is
part of the checkpoint, so a resumed run continues with the same targets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.distill.base import Distiller, kept_where


class PSKD(Distiller):
    single_process_reason = "it keeps per-sample predictions, and each rank sees other samples every epoch"
    class_labels_reason = "its targets mix each sample's one-hot label with its past prediction"

    def __init__(self, alpha_T: float = 0.8):
        self.alpha_T = alpha_T

    def setup(self, context) -> None:
        super().setup(context)
        samples, classes = context.data.train_size, context.data.num_classes
        self.predictions = torch.zeros(samples, classes, device=context.device)
        self.seen = torch.zeros(samples, dtype=torch.bool, device=context.device)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def alpha(self, epoch: int) -> float:
        return self.alpha_T * (epoch + 1) / self.context.epochs

    def targets(self, labels: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        classes = self.predictions.shape[1]
        label = labels.new_zeros(len(labels), classes, dtype=torch.float32)
        label.scatter_(1, labels[:, None], 1.0)  # unlike F.one_hot, never checks the labels on the host
        smoothing = getattr(self.criterion, "smoothing", 0.0)  # the loss's label smoothing: the label part only
        label = label * (1 - smoothing) + smoothing / classes if smoothing else label
        previous = torch.where(self.seen[indices, None], self.predictions[indices], label)
        alpha = self.alpha(epoch)
        return (1 - alpha) * label + alpha * previous

    def loss(self, images, labels, indices, logits):
        if self.pending is None:  # a closure's second pass must not overwrite the recorded predictions
            self.pending = (indices, F.softmax(logits.detach().float(), dim=-1))
        return self.criterion(logits, self.targets(labels, indices, self.context.progress.epoch), reduction="none")

    def after_step(self, step, kept) -> None:
        indices, probabilities = self.pending
        self.predictions[indices] = kept_where(kept, probabilities, self.predictions[indices])
        self.seen[indices] = True if kept is None else self.seen[indices] | kept
        self.pending = None

    def state_dict(self) -> dict:
        return {"predictions": self.predictions, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.predictions.copy_(state["predictions"])
        self.seen.copy_(state["seen"])
