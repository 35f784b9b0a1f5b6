"""Offline knowledge distillation with any divergence of the loss group (Hinton et al. 2015):

    L = (1 - alpha) * CE(y, z_s) + alpha * w_e * T^2 * D(softmax(z_t / T), softmax(z_s / T))

D is the run's `loss` (kl, rkl, js, ... all called as loss(student_logits, target_probabilities); `ce`
differs from kl by the teacher's entropy, a constant, so it gives the same gradients). T is
`distill.temperature` (the loss's own temperature must stay 1). w_e = min(1, epoch / warmup_epochs) ramps
the distillation term in over the first epochs (0-based epochs; warmup_epochs=0: no ramp).
Defaults are RepDistiller's KD: alpha 0.9, T 4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from omegaconf import DictConfig

from runner.distill.base import Distiller, tempered_divergence
from runner.distill.teacher import FrozenTeacher, teacher_files, teacher_model
from runner.errors import problems_from


class KD(Distiller):
    tempered = True
    loss_gets_labels = False  # the hard term is plain cross-entropy; the loss sees the teacher's probabilities

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        return super().validate_config(cfg) + problems_from(lambda: cls.meta_teacher(cfg))

    @staticmethod
    def meta_teacher(cfg: DictConfig) -> torch.nn.Module | None:
        """The teacher on the meta device, its weights' shapes checked (None while the class count is unknown)."""
        from runner.validate import data_shape

        shape, distill = data_shape(cfg), cfg.distill
        if shape.num_classes is None:
            teacher_files(distill.teacher, distill.teacher_model, cfg.dataset)
            return None
        return teacher_model(distill.teacher, distill.teacher_model, cfg.dataset, shape.in_channels,
                             shape.num_classes, device="meta")

    def __init__(self, teacher: str | None = None, teacher_model=None, alpha: float = 0.9,
                 temperature: float = 4.0, warmup_epochs: int = 0):
        self.source, self.teacher_model = teacher, teacher_model
        self.ce_weight, self.kd_weight = 1 - alpha, alpha
        self.temperature, self.warmup_epochs = temperature, warmup_epochs
        self.teacher_logged = False

    def setup(self, context) -> None:
        super().setup(context)
        self.teacher = FrozenTeacher(self.source, self.teacher_model, context)

    def ramp(self) -> float:
        return min(1.0, self.context.progress.epoch / self.warmup_epochs) if self.warmup_epochs else 1.0

    def objective(self, logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per sample."""
        hard = F.cross_entropy(logits.float(), labels, reduction="none")
        soft = tempered_divergence(self.criterion, logits, teacher_logits, self.temperature, "none")
        return self.ce_weight * hard + self.kd_weight * self.ramp() * soft

    def loss(self, images, labels, indices, logits):
        return self.objective(logits, self.teacher(images), labels)

    def evaluate(self) -> dict:
        """The teacher's accuracy, measured once at setup, goes into the first evaluation record."""
        if self.teacher_logged:
            return {}
        self.teacher_logged = True
        return self.teacher.metrics

    def summary(self) -> dict:
        return {"teacher_val_acc1": self.teacher.metrics["teacher/val/acc1"]}

    def state_dict(self) -> dict:
        return {"teacher_logged": self.teacher_logged}

    def load_state_dict(self, state: dict) -> None:
        self.teacher_logged = state["teacher_logged"]
