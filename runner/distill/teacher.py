"""A trained, frozen teacher for offline distillation (kd, nd, dhkd).

`distill.teacher` is either an earlier divrun run folder (its config.yaml builds the model, its
checkpoints/last.pt holds the weights) or a checkpoint file, whose architecture `distill.teacher_model`
names (a `conf/model` option). Weights are read with `weights_only=True` (runner.checkpoint.load). The
teacher never trains: no gradients, eval mode (BatchNorm uses its running statistics), and it runs under
the student's autocast because the step calls the distiller's loss inside it.

`teacher_model` holds every rule about the teacher; the pre-flight runs it on the meta device with the
checkpoint memory-mapped (no weights read), the run for real.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from runner import checkpoint
from runner.distill.base import prefixed
from runner.errors import ConfigError
from runner.models import build_model, model_config
from runner.run_folder import CHECKPOINTS, LAST_CHECKPOINT, load_config

RUN_CHECKPOINT = Path(CHECKPOINTS) / LAST_CHECKPOINT


def teacher_files(source: str | None, teacher_model: str | None, dataset: DictConfig) -> tuple[DictConfig, Path]:
    """(the teacher's model config, its weights file) for `distill.teacher` and `distill.teacher_model`."""
    if not source:
        raise ConfigError("distill.teacher: set it to the teacher's run folder (or a checkpoint file together "
                          "with distill.teacher_model=<model option>)")
    path = Path(source)
    if path.is_dir():
        model_cfg, weights = load_config(path).model, path / RUN_CHECKPOINT
    elif path.is_file():
        if teacher_model is None:
            raise ConfigError(f"distill.teacher={source} is a checkpoint file; name its architecture with "
                              f"distill.teacher_model=<model option>")
        model_cfg, weights = model_config(teacher_model, dataset, "distill.teacher_model"), path
    else:
        raise ConfigError(f"distill.teacher={source}: no such run folder or checkpoint file")
    if not weights.exists():
        raise ConfigError(f"distill.teacher={source}: {weights} is missing; did the teacher's run finish?")
    return model_cfg, weights


def teacher_model(source: str | None, teacher_model: str | None, dataset: DictConfig, in_channels: int,
                  num_classes: int, device: str | None = None) -> torch.nn.Module:
    """The teacher with its weights; on `device="meta"` the structure only, checked against the weights'
    shapes (the checkpoint memory-mapped, nothing read)."""
    model_cfg, weights = teacher_files(source, teacher_model, dataset)
    model = build_model(model_cfg, in_channels, num_classes, device=device)
    payload = checkpoint.load(weights, mmap=device == "meta")
    try:
        with warnings.catch_warnings():  # loading into meta parameters is a no-op, which torch warns about
            warnings.simplefilter("ignore")
            model.load_state_dict(payload.get("model", payload))
    except RuntimeError as error:
        raise ConfigError(f"distill.teacher={source}: its weights do not fit a {num_classes}-class "
                          f"{in_channels}-channel {type(model).__name__} ({str(error).splitlines()[0]}); "
                          f"the teacher must be trained on the same dataset") from error
    return model


class FrozenTeacher:
    def __init__(self, source: str | None, teacher_model_name, context):
        data = context.data
        model = teacher_model(source, teacher_model_name, context.dataset, data.in_channels, data.num_classes)
        self.model = context.place(model).eval().requires_grad_(False)
        self.metrics = prefixed(context.evaluate(self.model), "teacher")
        context.print(f"divrun: teacher {source}: val acc {self.metrics['teacher/val/acc1']:.4f}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) of a model exposing `features(x)` and `head` (every divrun model)."""
        features = self.model.features(images)
        return features, self.model.head(features)
