"""MESA, the memory-efficient SAF (Du et al., NeurIPS 2022; AngusDujw/SAF `MESA_train.py`).

Instead of SAF's per-sample memory of past outputs, an exponential moving average of the weights is the
teacher: theta_ema <- decay * theta_ema + (1 - decay) * theta after every step (parameters and floating
buffers such as BatchNorm statistics, like timm's ModelEmaV2; `runner/ema.py`, without its warm-up, as the
reference), evaluated in eval mode, and after
`start_epoch` (epoch > start_epoch, 0-based, as in the reference)

    L = loss(z, y) + lambda * tau^2 * mean_i KL(softmax(z_ema,i / tau) || softmax(z_i / tau))

Defaults are the reference's: lambda 0.8, tau 5, start epoch 5, decay 0.9998. The EMA model is evaluated
with the student (`ema/val/...` records) and checkpointed.
"""
from __future__ import annotations

import torch

from runner.distill.base import Distiller, prefixed
from runner.distill.saf import trajectory_loss
from runner.ema import WeightEMA, decay_problems
from runner.errors import require


class MESA(Distiller):
    def __init__(self, weight: float = 0.8, temperature: float = 5.0, decay: float = 0.9998, start_epoch: int = 5):
        require(decay_problems(decay, "distill.decay"))
        self.weight, self.temperature, self.decay, self.start_epoch = weight, temperature, decay, start_epoch

    def setup(self, context) -> None:
        super().setup(context)
        self.ema = WeightEMA(context.model, self.decay)

    def loss(self, images, labels, indices, logits):
        loss = self.label_loss(logits, labels)
        if self.context.progress.epoch > self.start_epoch:
            with torch.no_grad():
                ema_logits = self.ema(images)
            loss = loss + self.weight * trajectory_loss(logits, ema_logits, self.temperature)
        return loss

    def after_step(self, step, kept) -> None:
        self.ema.step(step + 1)  # after a dropped step the weights are the previous ones: the EMA moves toward those

    def evaluate(self) -> dict:
        return prefixed(self.context.evaluate(self.ema.module), "ema")

    def state_dict(self) -> dict:
        return {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["ema"])
