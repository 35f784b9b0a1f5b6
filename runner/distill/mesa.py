"""MESA, the memory-efficient SAF (Du et al., NeurIPS 2022; AngusDujw/SAF `MESA_train.py`).

Instead of SAF's per-sample memory of past outputs, an exponential moving average of the weights is the
teacher: theta_ema <- decay * theta_ema + (1 - decay) * theta after every step (parameters and floating
buffers such as BatchNorm statistics, like timm's ModelEmaV2), evaluated in eval mode, and after
`start_epoch` (epoch > start_epoch, 0-based, as in the reference)

    L = loss(z, y) + lambda * tau^2 * mean_i KL(softmax(z_ema,i / tau) || softmax(z_i / tau))

Defaults are the reference's: lambda 0.8, tau 5, start epoch 5, decay 0.9998. The EMA model is evaluated
with the student (`ema/val/...` records) and checkpointed.
"""
from __future__ import annotations

import copy

import torch

from runner.distill.base import Distiller, prefixed
from runner.distill.saf import trajectory_loss


class MESA(Distiller):
    def __init__(self, weight: float = 0.8, temperature: float = 5.0, decay: float = 0.9998, start_epoch: int = 5):
        self.weight, self.temperature, self.decay, self.start_epoch = weight, temperature, decay, start_epoch

    def setup(self, context) -> None:
        super().setup(context)
        self.model = context.model
        self.ema = copy.deepcopy(context.model).eval().requires_grad_(False)
        pairs = [(e, m) for e, m in zip(self.ema.state_dict().values(), self.model.state_dict().values())]
        self.float_pairs = [(e, m) for e, m in pairs if e.is_floating_point()]
        self.other_pairs = [(e, m) for e, m in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update_ema(self) -> None:
        ema, model = zip(*self.float_pairs)
        torch._foreach_lerp_(list(ema), list(model), 1.0 - self.decay)
        for ema_value, model_value in self.other_pairs:
            ema_value.copy_(model_value)

    def loss(self, images, labels, indices, logits):
        loss = self.criterion(logits, labels, reduction="none")
        if self.context.progress.epoch > self.start_epoch:
            with torch.no_grad():
                ema_logits = self.ema(images)
            loss = loss + self.weight * trajectory_loss(logits, ema_logits, self.temperature)
        return loss

    def after_step(self, step, kept) -> None:
        self.update_ema()  # after a dropped step the weights are the previous ones: the EMA moves toward those

    def evaluate(self) -> dict:
        return prefixed(self.context.evaluate(self.ema), "ema")

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
