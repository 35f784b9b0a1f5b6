"""Dual-head knowledge distillation, DHKD (Yang et al. 2024, "Dual-Head Knowledge Distillation: Enhancing
Logits Utilization with an Auxiliary Head"), checked against the official code, penghui-yang/DHKD
(helper/loops.py `train_distill`, distiller_zoo/BinaryKLNorm.py `BinaryKLNorm`, models/classifier.py
`NonLinearClassifier`, helper/optimizer.py `OptimGradAlign`, README's quick start).

Training one linear classifier with both the label loss and a logit-matching loss can collapse it; DHKD
gives the student a second head on the same penultimate features. The original head learns from the labels,
the auxiliary head matches the teacher's logits with the binary KL of their differences:

    L = ce_weight * CE(y, head(f)) + kd_weight * T^2 / N * sum_{i,k} KL(Bern(1/2) || Bern(sigmoid((a_ik - t_ik) / T)))

with a = aux_head(f), t the teacher's logits; each term is -1/2 log(4 d (1 - d)), d = sigmoid((a - t) / T),
zero exactly when a = t (d clamped to [1e-8, 1 - 1e-8], as BinaryKLNorm). No gradient is stopped between the
heads: both reach the shared backbone. Predictions (and evaluation) use the original head; the auxiliary head
is trained with its own optimizer on the run's schedule and checkpointed.

`aux_head`: `nonlinear` is the reference's NonLinearClassifier (linear to 200, dropout 0.1, BatchNorm1d,
ReLU, linear to the classes), `linear` one linear layer. `gradient_alignment` is the reference's `--ga`
(OptimGradAlign): over all student parameters (backbone, both heads) flattened into one vector, when the
distillation gradient g_kd conflicts with the classification gradient g_ce (<g_kd, g_ce> < 0) its component
along g_ce is removed, g_kd - <g_kd, g_ce> / |g_ce|^2 g_ce; the step uses g_ce + g_kd (PCGrad with the CE
gradient kept as is). It costs a second backward pass per step.
Defaults are the README's CIFAR-100 quick start: nonlinear head, gradient alignment, T 2 (BinaryKL_T),
weights 1 and 1. Its ImageNet command: linear head, no alignment, T 2, kd_weight 0.1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from omegaconf import DictConfig

from runner.distill.base import FeatureTap, meta_student, require_features_and_head
from runner.distill.kd import KD
from runner.errors import ConfigError, problems_from

EPS = 1e-8
NONLINEAR_WIDTH, NONLINEAR_DROPOUT = 200, 0.1  # the reference's NonLinearClassifier


def binary_kl_to_half(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 / N * sum_{i,k} KL(Bern(1/2) || Bern(d_ik)), d = sigmoid((logits - teacher_logits) / T)."""
    d = torch.sigmoid((logits.float() - teacher_logits.float()) / temperature).clamp(EPS, 1 - EPS)
    per_entry = -0.5 * (torch.log(d) + torch.log1p(-d)) - math.log(2.0)
    return temperature ** 2 * per_entry.sum() / logits.shape[0]


AUX_HEADS = ("linear", "nonlinear")


def auxiliary_head(kind: str, width: int, classes: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(width, classes)
    return nn.Sequential(nn.Linear(width, NONLINEAR_WIDTH), nn.Dropout(NONLINEAR_DROPOUT),
                         nn.BatchNorm1d(NONLINEAR_WIDTH), nn.ReLU(), nn.Linear(NONLINEAR_WIDTH, classes))


def flat(tensors, params: list[torch.Tensor]) -> torch.Tensor:
    """One vector of `tensors` (None: zeros shaped as the parameter, the reference's missing gradients)."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(tensors, params)])


def aligned(ce: torch.Tensor, kd: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """ce + kd in value, with the gradient g_ce + g_kd after g_kd loses its component along g_ce when the two
    conflict. The aligned gradient reaches the parameters through a surrogate <params, g> (one cheap backward)."""
    g_ce = flat(torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True), params)
    g_kd = flat(torch.autograd.grad(kd, params, allow_unused=True), params)
    conflict = torch.dot(g_kd, g_ce).clamp(max=0)
    gradient = g_ce + g_kd - conflict / g_ce.square().sum().clamp_min(torch.finfo(g_ce.dtype).tiny) * g_ce
    surrogate = torch.dot(flat(params, params), gradient)
    return (ce + kd).detach() + surrogate - surrogate.detach()


class DHKD(KD):
    single_process_reason = "it trains a second head that DDP does not synchronise"
    per_sample = False  # gradient alignment combines the batch's CE and KD gradients

    def __init__(self, teacher: str | None = None, teacher_model=None, temperature: float = 2.0,
                 ce_weight: float = 1.0, kd_weight: float = 1.0, aux_head: str = "nonlinear",
                 gradient_alignment: bool = True):
        if aux_head not in AUX_HEADS:
            raise ConfigError(f"distill.aux_head={aux_head}: choose linear or nonlinear")
        super().__init__(teacher, teacher_model, temperature=temperature)
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.aux_head_kind, self.gradient_alignment = aux_head, gradient_alignment

    @classmethod
    def trains_companion(cls, cfg: DictConfig) -> bool:
        return True

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        from runner.optim import capabilities

        problems = super().validate_config(cfg) + problems_from(lambda: require_features_and_head(meta_student(cfg)))
        scaled = cfg.trainer.precision == "fp16"  # `auto` is bf16 or fp32, never the scaled fp16
        if cfg.distill.gradient_alignment and (scaled or capabilities(cfg.optimizer).second_order):
            problems.append("distill.gradient_alignment=true takes unscaled first-order gradients: use "
                            "trainer.precision=bf16/fp32 and a first-order optimizer, or distill.gradient_alignment=false")
        return problems

    def setup(self, context) -> None:
        super().setup(context)
        self.tap = FeatureTap(context.model)
        head = context.model.head
        self.aux_head = context.companion(auxiliary_head(self.aux_head_kind, head.in_features, head.out_features))

    def loss(self, images, labels, indices, logits):
        aux_logits = self.aux_head.module(self.tap.features)
        ce = self.ce_weight * F.cross_entropy(logits.float(), labels)
        kd = self.kd_weight * binary_kl_to_half(aux_logits, self.teacher(images), self.temperature)
        if not self.gradient_alignment:
            return ce + kd
        return aligned(ce, kd, self.context.params + self.aux_head.params)

    def state_dict(self) -> dict:
        return super().state_dict() | {"aux_head": self.aux_head.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.aux_head.load_state_dict(state["aux_head"])
