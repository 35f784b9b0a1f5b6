"""What a training method (a distiller, a per-sample weighting, a data selection) gets from the run: a narrow
`MethodContext`, never the train loop itself.

    model, params          the student (unwrapped) and its trained parameters
    device, place(m)       the training device; a module moved there in the run's memory format
    autocast()             the step's autocast context (a method's extra forward passes run under it)
    data                   `DataInfo`: name, classes, channels, training-set size and loader (one epoch:
                           `data.train_loader.epoch(0)`, yielding (images, labels, sample_indices)), and
                           `class_counts(needed_by)`: training samples per class, read when asked
    dataset                the dataset's config (to compose another model for the same data)
    criterion              the run's loss (`loss` group): D in distillation, the label loss otherwise
    progress               `Progress`: the current step and epoch, read when needed; `epochs`, `steps` the run's
                           totals
    evaluate(model)        the validation metrics of another model ({"val/acc1": ...})
    build_model(option)    a `conf/model` option (None: the student's architecture) for this dataset, on the device
    companion(module, overrides)  a module trained beside the student with its own optimizer (the run's
                           optimizer config with `overrides`, the run's lr schedule and clipping), stepped by the
                           one optimizer driver with the student's (runner/step.py), skipped with it on a
                           non-finite step, and checkpointed by the method (`Companion.state_dict`)
    print(message)         one line on the console (rank 0)

A distiller is called by the step as `loss(images, labels, indices, logits)` (a scalar, or per-sample losses
that the step weighs and averages at its one weighting point; a weighting's `multipliers(losses, labels)` and a
selection's `(images, labels, indices) -> the kept ones` are called there too, runner/step.py) and `after_step(step, kept)` (`kept`: a device bool, False
when on_nonfinite=skip dropped the step; None when no step is ever dropped).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from runner.optim import Capabilities, build_optimizer
from runner.step import OptimizerDriver


@dataclass
class Progress:
    """Where the run is: the loop advances it, methods read it."""
    step: int = 0
    epoch: int = 0
    samples: int = 0  # trained on so far, over all ranks (batch=adaptive's schedules follow it)


@dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    in_channels: int
    train_size: int
    train_loader: object
    class_counts: Callable[[str], torch.Tensor]


class Companion:
    """A module trained beside the student: its optimizer driver joins the step's (see MethodContext)."""

    def __init__(self, module: torch.nn.Module, driver: OptimizerDriver):
        self.module, self.driver = module, driver
        self.optimizer, self.params, self.lr_factors = driver.optimizer, driver.params, driver.lr_factors

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class MethodContext:
    model: torch.nn.Module
    device: torch.device
    channels_last: bool
    autocast: Callable
    data: DataInfo
    dataset: DictConfig
    criterion: torch.nn.Module
    progress: Progress
    epochs: int
    steps: int
    evaluate: Callable[[torch.nn.Module], dict]
    print: Callable[[str], None]
    # what companions are built from: the run's optimizer config, schedule factors, clipping, scaler
    optimizer_config: DictConfig
    capabilities: Capabilities
    lr_factors: list[float]
    grad_clip: float | None
    scaler: torch.amp.GradScaler | None
    model_config: DictConfig
    drivers: list[OptimizerDriver] = field(default_factory=list)  # the step's: the student's first

    @property
    def params(self) -> list[torch.Tensor]:
        return self.drivers[0].params

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)

    def build_model(self, option: str | None = None) -> torch.nn.Module:
        from runner.models import build_model, model_config

        cfg = model_config(option, self.dataset, "distill.teacher_model") if option is not None else self.model_config
        return self.place(build_model(cfg, self.data.in_channels, self.data.num_classes))

    def companion(self, module: torch.nn.Module, overrides: dict | None = None) -> Companion:
        module = self.place(module)
        optimizer = build_optimizer(OmegaConf.merge(self.optimizer_config, overrides or {}), module)
        driver = OptimizerDriver(optimizer, module, self.lr_factors, self.grad_clip, self.scaler, self.capabilities)
        self.drivers.append(driver)
        return Companion(module, driver)
