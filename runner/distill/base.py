"""The train loop's distillation hooks, and the pieces the methods share.

A distiller is built from `conf/distill/<name>.yaml` and plugged into the Trainer, which calls
    setup(trainer)                          once, when the student, data, optimizer and schedule exist
    loss(images, labels, indices, logits)   the student's training objective, inside the step's autocast
    after_step(step, scaler)                after the student's optimizer step (before the scaler updates)
    evaluate() -> dict                      extra records for each evaluation (e.g. a second model's accuracy)
    summary() -> dict                       extra keys for summary.json
    state_dict() / load_state_dict(state)   everything it trains or remembers, in the checkpoint
`Distiller` itself is `distill=none`: the configured loss on the labels, nothing else.

Temperature: a method's `temperature` T divides both models' logits before the divergence, and the loss is
scaled by T^2 (Hinton et al.), so the loss group's own `loss.temperature` must stay 1 (`check_divergence`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError
from runner.optim import build_optimizer


class Distiller:
    # what keeps a method off several processes: a trainable second module outside DDP, or a per-sample
    # memory (each rank sees other samples every epoch); None: runs under DDP
    single_process_reason: str | None = None
    # why a method needs class indices as targets (not mixup/cutmix's probability targets); None: it takes either
    class_labels_reason: str | None = None
    """`distill=none`: train on the labels with the configured loss."""

    def setup(self, trainer) -> None:
        self.trainer = trainer
        self.criterion = trainer.loss_fn

    def loss(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
             logits: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, labels)

    def after_step(self, step: int, scaler: torch.amp.GradScaler | None) -> None:
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
def check_divergence(divergence: torch.nn.Module, method: str) -> None:
    """The method's temperature is the one temperature: a loss with its own would scale the logits twice."""
    own = getattr(divergence, "temperature", 1.0)
    if own != 1.0:
        raise ConfigError(f"loss.temperature={own} with distill={method}: distill.temperature already divides "
                          f"both models' logits; set loss.temperature=1")


def tempered_divergence(divergence: torch.nn.Module, student_logits: torch.Tensor, target_logits: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """T^2 * D(softmax(target / T), softmax(student / T)) with D any loss of the loss group (target fixed)."""
    target = F.softmax(target_logits.detach().float() / temperature, dim=-1)
    return temperature ** 2 * divergence(student_logits.float() / temperature, target)


def kl_per_sample(target_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """KL(q || p) = sum_k q_k (log q_k - log p_k) per row, from log-probabilities (finite for any logits)."""
    return (target_log_probs.exp() * (target_log_probs - log_probs)).sum(-1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    return -(log_probs.exp() * log_probs).sum(-1)


# ---- shared pieces --------------------------------------------------------------------------------------
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


def place(module: torch.nn.Module, trainer) -> torch.nn.Module:
    memory_format = torch.channels_last if trainer.rt.channels_last else torch.preserve_format
    return module.to(trainer.rt.device, memory_format=memory_format)


class Companion:
    """A module trained beside the student (a peer network, an extra head or projector): its own optimizer,
    built from the run's optimizer config (with `overrides`), on its own instance of the run's schedule,
    with the run's gradient clipping. Its gradients come from the loss the student's backward pass runs."""

    def __init__(self, module: torch.nn.Module, trainer, overrides: DictConfig | dict | None = None):
        cfg = trainer.cfg
        if trainer.capabilities.needs_closure:
            raise ConfigError(f"distill: optimizer={cfg.optimizer._target_.rsplit('.', 1)[-1]} re-evaluates the "
                              f"loss in a closure, which would step a second model twice; pick another optimizer")
        self.module = place(module, trainer)
        optimizer_cfg = OmegaConf.merge(cfg.optimizer, overrides or {})
        self.optimizer = build_optimizer(optimizer_cfg, self.module)
        schedule = instantiate(cfg.schedule)(total_steps=trainer.total_steps, steps_per_epoch=trainer.steps_per_epoch)
        self.lr_factors = schedule.factors()
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.grad_clip = cfg.trainer.grad_clip

    def step(self, step: int, scaler: torch.amp.GradScaler | None) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.lr_factors[step]
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        if scaler is not None:
            scaler.step(self.optimizer)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


def prefixed(metrics: dict, prefix: str) -> dict:
    """{"val/acc1": x} -> {"<prefix>/val/acc1": x}."""
    return {f"{prefix}/{key}": value for key, value in metrics.items()}
