"""Dual-head knowledge distillation, DHKD (Yang et al. 2024, "Dual-Head Knowledge Distillation: Enhancing
Logits Utilization with an Auxiliary Head").

Training one linear classifier with both the label loss and a logit-matching loss can collapse it; DHKD
gives the student a second linear head on the same penultimate features. The original head learns from the
labels, the auxiliary head matches the teacher's logits with the binary KL of their differences:

    L = ce_weight * CE(y, head(f)) + kd_weight * T^2 / N * sum_{i,k} KL(Bern(1/2) || Bern(sigmoid((a_ik - t_ik) / T)))

with a = aux_head(f), t the teacher's logits; each term is -1/2 log(4 d (1 - d)), d = sigmoid((a - t) / T),
zero exactly when a = t (the reference's BinaryKLNorm, d clamped to [1e-8, 1 - 1e-8]). Gradients of both
heads reach the shared backbone. Predictions (and evaluation) use the original head; the auxiliary head is
trained with its own optimizer on the run's schedule and checkpointed. Defaults (T 4, weights 1) are
divrun's choice, not taken from the paper.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from runner.distill.base import Companion, FeatureTap
from runner.distill.kd import KD

EPS = 1e-8


def binary_kl_to_half(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 / N * sum_{i,k} KL(Bern(1/2) || Bern(d_ik)), d = sigmoid((logits - teacher_logits) / T)."""
    d = torch.sigmoid((logits.float() - teacher_logits.float()) / temperature).clamp(EPS, 1 - EPS)
    per_entry = -0.5 * (torch.log(d) + torch.log1p(-d)) - math.log(2.0)
    return temperature ** 2 * per_entry.sum() / logits.shape[0]


class DHKD(KD):
    single_process_reason = "it trains a second head that DDP does not synchronise"

    def __init__(self, teacher: str | None = None, teacher_model=None, temperature: float = 4.0,
                 ce_weight: float = 1.0, kd_weight: float = 1.0):
        super().__init__(teacher, teacher_model, alpha=0.0, temperature=temperature)
        self.ce_weight, self.kd_weight = ce_weight, kd_weight

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.tap = FeatureTap(trainer.model)
        head = trainer.model.head
        self.aux_head = Companion(nn.Linear(head.in_features, head.out_features), trainer)

    def loss(self, images, labels, indices, logits):
        aux_logits = self.aux_head.module(self.tap.features)
        return (self.ce_weight * F.cross_entropy(logits.float(), labels)
                + self.kd_weight * binary_kl_to_half(aux_logits, self.teacher(images), self.temperature))

    def after_step(self, step, scaler) -> None:
        self.aux_head.step(step, scaler)

    def state_dict(self) -> dict:
        return super().state_dict() | {"aux_head": self.aux_head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.aux_head.load_state_dict(state["aux_head"])
