"""The distillation method's hooks, and the pieces the methods share.

A distiller is built from `conf/distill/<name>.yaml`; the run calls
    setup(context)                          once, with a MethodContext (runner/context.py): the student,
                                            data, loss, progress, evaluation, companion modules
    loss(images, labels, indices, logits)   the student's training objective, inside the step's autocast:
                                            per-sample values (N,) where the method defines them per sample
                                            (`per_sample = True`: the step's weighting point weighs and averages
                                            them, runner/step.py), else the batch's scalar
    after_step(step, kept)                  after the optimizer steps; `kept` False (a device bool) where
                                            trainer.on_nonfinite=skip dropped the step, None without a guard
    evaluate() -> dict                      extra records for each evaluation (e.g. a second model's accuracy)
    summary() -> dict                       extra keys for summary.json
    state_dict() / load_state_dict(state)   everything it trains or remembers, in the checkpoint
`Distiller` itself is `distill=none`: the configured loss on the labels, nothing else. A companion module
(a second network, a projector, a head) comes from `context.companion(module)`: the step drives its optimizer
with the student's, so nothing here steps an optimizer.

Targets: the loss group's loss smooths labels only (`loss.smoothing`); a teacher's or a model's own past
probabilities reach it as probability vectors and are used as given; the batch's labels, class indices or
mixup/cutmix's mix of them, go through `label_loss` (smoothed). `loss_gets_labels` says whether the
method's objective calls that loss on labels (class indices or a label-derived mix): start-up validation then
refuses a divergence that needs q > 0 with loss.smoothing=0 (`Loss.validate_config`).

Config rules that involve the rest of the run are the classmethod `validate_config(cfg)`, run by the
pre-flight (runner/validate.py) before anything is built: a method that divides both models' logits by its
`temperature` T before the divergence and scales the loss by T^2 (Hinton et al.; `tempered = True`) needs
the loss group's own `loss.temperature` at 1; one that trains a companion module (its own optimizer) cannot
share the step with an optimizer that re-evaluates the loss in a closure.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from runner.errors import ConfigError


class Distiller:
    """`distill=none`: train on the labels with the configured loss."""
    # what keeps a method off several processes: a trainable second module outside DDP, or a per-sample
    # memory (each rank sees other samples every epoch); None: runs under DDP
    single_process_reason: str | None = None
    # why a method needs class indices as targets (not mixup/cutmix's probability targets); None: it takes either
    class_labels_reason: str | None = None
    loss_gets_labels = True  # the objective calls the loss group's loss on labels
    tempered = False  # the method's temperature divides both models' logits: loss.temperature must be 1
    per_sample = True  # loss() returns one value per sample (False: a batch scalar that no weighting can split)

    @classmethod
    def validate_config(cls, cfg: DictConfig) -> list[str]:
        from runner.optim import capabilities

        method, own = cls.__name__.lower(), cfg.loss.get("temperature", 1.0)
        problems = []
        if cls.tempered and own != 1.0:
            problems.append(f"loss.temperature={own} with distill={method}: distill.temperature already divides "
                            f"both models' logits; set loss.temperature=1")
        if cls.trains_companion(cfg) and capabilities(cfg.optimizer).needs_closure:
            problems.append(f"distill={method}: optimizer={cfg.optimizer._target_.rsplit('.', 1)[-1]} re-evaluates "
                            f"the loss in a closure, which would step a second model twice; pick another optimizer")
        return problems

    @classmethod
    def trains_companion(cls, cfg: DictConfig) -> bool:
        """Whether the method trains a module beside the student with its own optimizer (`Companion`)."""
        return False

    def setup(self, context) -> None:
        self.context = context
        self.criterion = context.criterion

    def loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             logits: torch.Tensor) -> torch.Tensor:
        return self.label_loss(logits, labels)

    def label_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss group's per-sample loss on the batch's labels: class indices, or mixup/cutmix's mix of one-hot labels
        (N, K), which `loss.smoothing` smooths as it does the labels they mix."""
        return self.criterion(logits, labels, from_labels=True, reduction="none")

    def after_step(self, step: int, kept: torch.Tensor | None) -> None:
        pass

    def evaluate(self) -> dict:
        return {}

    def summary(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ---- divergences between tempered distributions ---------------------------------------------------------
def tempered_divergence(divergence: torch.nn.Module, student_logits: torch.Tensor, target_logits: torch.Tensor,
                        temperature: float, reduction: str = "mean") -> torch.Tensor:
    """T^2 * D(softmax(target / T), softmax(student / T)) with D any loss of the loss group (target fixed):
    the batch mean, or per sample with reduction="none"."""
    target = F.softmax(target_logits.detach().float() / temperature, dim=-1)
    return temperature ** 2 * divergence(student_logits.float() / temperature, target, reduction=reduction)


def kl_per_sample(target_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_k q_k (log q_k - log p_k) per row, from log-probabilities (finite for any logits)."""
    return (target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(-1)


# ---- shared pieces --------------------------------------------------------------------------------------
def meta_student(cfg: DictConfig) -> torch.nn.Module:
    """The run's model built on the meta device (its structure, no memory): for config checks."""
    from runner.models import build_model
    from runner.validate import data_shape

    shape = data_shape(cfg)
    return build_model(cfg.model, shape.in_channels, shape.num_classes or 2, device="meta")


def require_features_and_head(model: torch.nn.Module) -> None:
    if not (callable(getattr(model, "features", None)) and isinstance(getattr(model, "head", None), torch.nn.Linear)):
        raise ConfigError(f"model {type(model).__name__} has no `features(x)` and linear `head`; feature "
                          f"distillation needs both (every divrun model but the torchvision ones has them)")


class FeatureTap:
    """Keeps the input of `model.head` (the penultimate features) from the model's latest forward pass."""

    def __init__(self, model: torch.nn.Module):
        require_features_and_head(model)
        self.features: torch.Tensor | None = None
        model.head.register_forward_pre_hook(self._keep)

    def _keep(self, module, inputs) -> None:
        self.features = inputs[0]


def kept_where(kept: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """A memory's new rows, or the old ones where the step was dropped (`kept` False)."""
    return new if kept is None else torch.where(kept, new, old)


def prefixed(metrics: dict, prefix: str) -> dict:
    """{"val/acc1": x} -> {"<prefix>/val/acc1": x}."""
    return {f"{prefix}/{key}": value for key, value in metrics.items()}
