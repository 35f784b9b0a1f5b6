"""KD++: KD plus the feature norm-and-direction loss (Wang et al., NeurIPS 2023, "Improving Knowledge
Distillation via Regularizing Feature Norm and Direction"; WangYZ1608/Knowledge-Distillation-via-ND).

    L = KD loss (see kd.py) + nd_weight * mean_i [ 1 - <f_s,i, c_{y_i} / |c_{y_i}|> / max(|f_s,i|, |f_t,i|) ]

f_s, f_t are the student's and teacher's penultimate features (the input of `head`) and c_k the mean
teacher feature of class k over the training set, computed once at setup (the teacher in eval mode, the
training loader's first epoch). The term aligns the student's features with the teacher's class centres
and pushes their norm up to at least the teacher's. When the widths differ, the student's features go
through a projector (BatchNorm1d, dropout 0.5, linear), the reference's EmbTrans, trained with its own
optimizer on the run's schedule and checkpointed. Defaults follow the reference's resnet56 -> resnet20
setting (KD weight 1, ND weight 2, T 4, the KD term ramped in over 20 epochs) rescaled to kd's convex
form: alpha 0.5 (CE and KD weighted 1 : 1) and nd_weight 1.0, i.e. the reference's 1 : 1 : 2 halved.
"""
from __future__ import annotations

import torch
from torch import nn

from runner.distill.base import Companion, FeatureTap, require_features_and_head
from runner.distill.kd import KD


def norm_direction_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, centers: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """mean_i 1 - <f_s,i, c_y / |c_y|> / max(|f_s,i|, |f_t,i|)."""
    student_features, teacher_features = student_features.float(), teacher_features.float()
    directions = nn.functional.normalize(centers[labels], dim=-1)
    largest_norm = torch.maximum(student_features.norm(dim=-1), teacher_features.norm(dim=-1))
    return (1 - (student_features * directions).sum(-1) / largest_norm).mean()


@torch.no_grad()
def class_centers(teacher, loader, num_classes: int, autocast) -> torch.Tensor:
    """Mean teacher feature per class over one pass of `loader`."""
    sums, counts = None, None
    for images, labels, _ in loader.epoch(0):
        with autocast():
            features, _ = teacher.features_and_logits(images)
        features = features.float()
        if sums is None:
            sums = torch.zeros(num_classes, features.shape[1], device=features.device)
            counts = torch.zeros(num_classes, device=features.device)
        sums.index_add_(0, labels, features)
        counts.index_add_(0, labels, torch.ones_like(labels, dtype=counts.dtype))
    return sums / counts.clamp_min(1)[:, None]


class ND(KD):
    single_process_reason = "it trains a projector that DDP does not synchronise"

    def __init__(self, teacher: str | None = None, teacher_model=None, alpha: float = 0.5, temperature: float = 4.0,
                 warmup_epochs: int = 20, nd_weight: float = 1.0):
        super().__init__(teacher, teacher_model, alpha, temperature, warmup_epochs)
        self.nd_weight = nd_weight

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.tap = FeatureTap(trainer.model)
        require_features_and_head(self.teacher.model)
        self.centers = class_centers(self.teacher, trainer.train_loader, trainer.splits.num_classes, trainer.autocast)
        student_width, teacher_width = trainer.model.head.in_features, self.teacher.model.head.in_features
        self.projector = None
        if student_width != teacher_width:
            projector = nn.Sequential(nn.BatchNorm1d(student_width), nn.Dropout(0.5),
                                      nn.Linear(student_width, teacher_width))
            nn.init.zeros_(projector[2].bias)
            self.projector = Companion(projector, trainer)

    def loss(self, images, labels, indices, logits):
        teacher_features, teacher_logits = self.teacher.features_and_logits(images)
        student_features = self.tap.features
        if self.projector is not None:
            student_features = self.projector.module(student_features)
        nd = norm_direction_loss(student_features, teacher_features, self.centers, labels)
        return self.objective(logits, teacher_logits, labels) + self.nd_weight * nd

    def after_step(self, step, scaler) -> None:
        if self.projector is not None:
            self.projector.step(step, scaler)

    def state_dict(self) -> dict:
        state = super().state_dict()
        return state | ({"projector": self.projector.state_dict()} if self.projector is not None else {})

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])
