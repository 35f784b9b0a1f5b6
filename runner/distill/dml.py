"""Deep mutual learning (Zhang et al. 2018): two networks trained together, each distilling the other.

    L_s = CE(y, z_s) + beta * T^2 * D(softmax(z_t / T), softmax(z_s / T))
    L_t = CE(y, z_t) + beta * T^2 * D(softmax(z_s / T), softmax(z_t / T))

D is the run's `loss` (kl gives the paper's KL), the other model's distribution is a fixed target (no
gradient through it), T = `distill.temperature` (the paper: 1). The second network ("teacher",
`distill.teacher_model`, default the student's architecture) has its own optimizer (the run's optimizer
config; `distill.teacher_lr` sets its own lr) and its own instance of the run's schedule. The step
backpropagates L_s + L_t, which gives each network exactly its own loss's gradient (the targets are
detached); `train/loss` therefore logs L_s + L_t. Both networks are evaluated (`teacher/val/...` records)
and checkpointed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from omegaconf import DictConfig

from runner.distill.base import Distiller, prefixed, tempered_divergence
from runner.errors import problems_from
from runner.models import model_config


class DML(Distiller):
    single_process_reason = "it trains a second network that DDP does not synchronise"
    tempered = True
    per_sample = False  # the two networks' losses, summed: no one sample's weight for both
    loss_gets_labels = False  # the label terms are plain cross-entropy; the loss sees the other's probabilities

    @classmethod
    def trains_companion(cls, cfg: DictConfig) -> bool:
        return True

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        choice = cfg.distill.teacher_model
        named = problems_from(lambda: model_config(choice, cfg.dataset, "distill.teacher_model")) if choice else []
        return super().validate_config(cfg) + named

    def __init__(self, teacher_model=None, teacher_lr: float | None = None, weight: float = 1.0,
                 temperature: float = 1.0):
        self.teacher_model, self.teacher_lr = teacher_model, teacher_lr
        self.weight, self.temperature = weight, temperature

    def setup(self, context) -> None:
        super().setup(context)
        model = context.build_model(self.teacher_model)
        self.peer = context.companion(model, {"lr": self.teacher_lr} if self.teacher_lr is not None else None)
        self.last_metrics: dict = {}

    @property
    def teacher(self) -> torch.nn.Module:
        return self.peer.module

    def student_distillation(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return self.weight * tempered_divergence(self.criterion, logits, teacher_logits, self.temperature)

    def teacher_distillation(self, teacher_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return self.weight * tempered_divergence(self.criterion, teacher_logits, logits, self.temperature)

    def pair_losses(self, logits: torch.Tensor, teacher_logits: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        student = F.cross_entropy(logits.float(), labels) + self.student_distillation(logits, teacher_logits)
        teacher = F.cross_entropy(teacher_logits.float(), labels) + self.teacher_distillation(teacher_logits, logits)
        return student, teacher

    def loss(self, images, labels, indices, logits):
        student, teacher = self.pair_losses(logits, self.teacher(images), labels)
        return student + teacher

    def evaluate(self) -> dict:
        self.last_metrics = prefixed(self.context.evaluate(self.teacher), "teacher")
        return self.last_metrics

    def summary(self) -> dict:
        return {"teacher_final_val_acc1": self.last_metrics.get("teacher/val/acc1")}

    def state_dict(self) -> dict:
        return {"teacher": self.peer.state_dict(), "last_metrics": self.last_metrics}

    def load_state_dict(self, state: dict) -> None:
        self.peer.load_state_dict(state["teacher"])
        self.last_metrics = state["last_metrics"]
