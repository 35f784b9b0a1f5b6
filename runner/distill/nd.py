"""KD++: KD plus the feature norm-and-direction loss (Wang et al., NeurIPS 2023, "Improving Knowledge
Distillation via Regularizing Feature Norm and Direction"), checked against the official code,
WangYZ1608/Knowledge-Distillation-via-ND (CIFAR/train_cifar_kd.py `train`, CIFAR/utils.py `DirectNormLoss`
and `KDLoss`, CIFAR/emb_fea_distribution.py `emb_fea`, CIFAR/Models/embtrans_cifar.py `EmbTrans`):

    L = ce_weight * CE(y, z_s) + kd_weight * w_e * T^2 * D(softmax(z_t / T), softmax(z_s / T))
        + nd_weight * mean_i [ 1 - <f_s,i, c_{y_i} / |c_{y_i}|> / max(|f_s,i|, |f_t,i|) ]

three independent weights, as the reference's cls/kd/nd loss factors (not kd's convex alpha form).
w_e = min(1, epoch / warmup_epochs) ramps only the KD term (0-based epochs, as the reference); CE and ND are
never ramped. D is the run's loss (kl: the reference's KDLoss, batch-mean KL).
f_s, f_t are the student's and teacher's penultimate features: the pooled, flattened input of the linear
classifier (the reference's `embed=True` output). c_k is the mean teacher feature of class k over one epoch
of the training loader, with its augmentation, the teacher in eval mode (the reference computes it offline
with `emb_fea` over every training image and loads it from center_emb_train.json; divrun computes it at
setup, and the loader's dropped last partial batch is left out).
When the widths differ, the student's features go through the reference's EmbTrans projector (BatchNorm1d,
dropout 0.5, linear with zero bias), trained with its own optimizer on the run's schedule and checkpointed.
Defaults are the reference's resnet56 -> resnet20 CIFAR-100 setting (train_cifar.sh): weights 1 : 1 : 2,
T 4, warmup 20. Its other CIFAR-100 pairs (cls : kd : nd): resnet32x4 -> resnet8x4 1 : 3.5 : 2, wrn40_2 ->
wrn40_1 1 : 1 : 1.5, resnet50 -> mobilenetv2 1 : 3 : 0.5, resnet32x4 -> shufflenetv1 1 : 2.5 : 1.5,
resnet32x4 -> shufflenetv2 1 : 4 : 0.5. ImageNet (ImageNet/train.sh, train_kd.py): T 1, warmup 5, and
resnet34 -> resnet18 1 : 2.5 : 1, resnet50 -> resnet18 1 : 4 : 1, resnet101 -> resnet18 1 : 3.5 : 4,
resnet152 -> resnet18 1 : 4 : 2, resnet50 -> mobilenetv1 1 : 4 : 1.
"""
from __future__ import annotations

import torch
from torch import nn

from omegaconf import DictConfig

from runner.distill.base import FeatureTap, meta_student, require_features_and_head
from runner.distill.kd import KD
from runner.errors import ConfigError, problems_from


def norm_direction_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, centers: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """1 - <f_s,i, c_y / |c_y|> / max(|f_s,i|, |f_t,i|) per sample i."""
    student_features, teacher_features = student_features.float(), teacher_features.float()
    directions = nn.functional.normalize(centers[labels], dim=-1)
    largest_norm = torch.maximum(student_features.norm(dim=-1), teacher_features.norm(dim=-1))
    return 1 - (student_features * directions).sum(-1) / largest_norm


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
    class_labels_reason = "its norm-direction term picks each sample's class centre by its label"

    @classmethod
    def trains_companion(cls, cfg: DictConfig) -> bool:
        """A projector, when the student's and the teacher's feature widths differ."""
        try:
            models = [meta_student(cfg), cls.meta_teacher(cfg)]
        except ConfigError:  # reported by validate_config
            return False
        widths = [m.head.in_features for m in models if isinstance(getattr(m, "head", None), nn.Linear)]
        return len(widths) == 2 and widths[0] != widths[1]

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        def features_and_heads():
            for model in (meta_student(cfg), cls.meta_teacher(cfg)):
                if model is not None:
                    require_features_and_head(model)
        return super().validate_config(cfg) + problems_from(features_and_heads)

    def __init__(self, teacher: str | None = None, teacher_model=None, ce_weight: float = 1.0,
                 kd_weight: float = 1.0, nd_weight: float = 2.0, temperature: float = 4.0, warmup_epochs: int = 20):
        super().__init__(teacher, teacher_model, temperature=temperature, warmup_epochs=warmup_epochs)
        self.ce_weight, self.kd_weight, self.nd_weight = ce_weight, kd_weight, nd_weight

    def setup(self, context) -> None:
        super().setup(context)
        self.tap = FeatureTap(context.model)
        require_features_and_head(self.teacher.model)
        data = context.data
        self.centers = class_centers(self.teacher, data.train_loader, data.num_classes, context.autocast)
        student_width, teacher_width = context.model.head.in_features, self.teacher.model.head.in_features
        self.projector = None
        if student_width != teacher_width:
            projector = nn.Sequential(nn.BatchNorm1d(student_width), nn.Dropout(0.5),
                                      nn.Linear(student_width, teacher_width))
            nn.init.zeros_(projector[2].bias)
            self.projector = context.companion(projector)

    def loss(self, images, labels, indices, logits):
        teacher_features, teacher_logits = self.teacher.features_and_logits(images)
        student_features = self.tap.features
        if self.projector is not None:
            student_features = self.projector.module(student_features)
        nd = norm_direction_loss(student_features, teacher_features, self.centers, labels)
        return self.objective(logits, teacher_logits, labels) + self.nd_weight * nd

    def state_dict(self) -> dict:
        state = super().state_dict()
        return state | ({"projector": self.projector.state_dict()} if self.projector is not None else {})

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.projector is not None:
            self.projector.load_state_dict(state["projector"])
