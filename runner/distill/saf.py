"""Sharpness-Aware Training for Free, SAF (Du et al., NeurIPS 2022; AngusDujw/SAF `SAF_train.py`).

SAF penalises the change of the model's outputs along its trajectory: in epoch e (0-based) after
`start_epoch`,

    L = loss(z, y) + lambda * tau^2 * mean_i KL(softmax(y_past,i / tau) || softmax(z_i / tau))

with y_past,i the logits the model produced for sample i in its training forward pass E = `epochs_back`
epochs earlier. The logits of the last E + 1 epochs live in a ring buffer ((E + 1) x N x classes, float32,
on the training device, in the checkpoint), addressed by the loaders' sample indices: epoch e writes slot
e mod (E + 1) and reads slot (e - E) mod (E + 1), as the reference does. Defaults are the paper's:
tau 5, E 3, start epoch 5 (active from epoch 6, `epoch > start_epoch` as in the reference), lambda 0.3.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.distill.base import Distiller, kept_where, kl_per_sample
from runner.errors import ConfigError


def trajectory_loss(logits: torch.Tensor, reference_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(reference_i / tau) || softmax(logits_i / tau)) per sample i; the reference is fixed."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(reference_logits.detach().float() / temperature, dim=-1)
    return temperature ** 2 * kl_per_sample(log_q, log_p)


class SAF(Distiller):
    single_process_reason = "it keeps per-sample outputs, and each rank sees other samples every epoch"

    def __init__(self, weight: float = 0.3, temperature: float = 5.0, epochs_back: int = 3, start_epoch: int = 5):
        if epochs_back < 1 or start_epoch + 1 < epochs_back:
            raise ConfigError(f"distill.epochs_back={epochs_back}, distill.start_epoch={start_epoch}: the loss reads "
                              f"outputs from epochs_back >= 1 epochs earlier; set start_epoch >= epochs_back - 1")
        self.weight, self.temperature = weight, temperature
        self.epochs_back, self.start_epoch = epochs_back, start_epoch

    def setup(self, context) -> None:
        super().setup(context)
        slots, samples, classes = self.epochs_back + 1, context.data.train_size, context.data.num_classes
        self.outputs = torch.zeros(slots, samples, classes, device=context.device)
        self.pending: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def past_outputs(self, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        """The logits recorded for these samples in epoch `epoch - epochs_back`."""
        return self.outputs[(epoch - self.epochs_back) % (self.epochs_back + 1), indices]

    def loss(self, images, labels, indices, logits):
        epoch = self.context.progress.epoch
        if self.pending is None:  # a closure's second pass must not overwrite the recorded outputs
            self.pending = (indices, logits.detach().float(), epoch)
        loss = self.label_loss(logits, labels)
        if epoch > self.start_epoch:
            loss = loss + self.weight * trajectory_loss(logits, self.past_outputs(indices, epoch), self.temperature)
        return loss

    def after_step(self, step, kept) -> None:
        indices, logits, epoch = self.pending
        slot = epoch % (self.epochs_back + 1)
        self.outputs[slot, indices] = kept_where(kept, logits, self.outputs[slot, indices])
        self.pending = None

    def state_dict(self) -> dict:
        return {"outputs": self.outputs}

    def load_state_dict(self, state: dict) -> None:
        self.outputs.copy_(state["outputs"])
