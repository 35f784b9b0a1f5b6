"""A trained, frozen teacher for offline distillation (kd, nd, dhkd).

`distill.teacher` is either an earlier divrun run folder (its config.yaml builds the model, its
checkpoints/last.pt holds the weights) or a checkpoint file, whose architecture `distill.teacher_model`
names (a `conf/model` option). Weights are read with `weights_only=True` (runner.checkpoint.load). The
teacher never trains: no gradients, eval mode (BatchNorm uses its running statistics), and it runs under
the student's autocast because the Trainer calls the distiller's loss inside it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from runner import checkpoint
from runner.distill.base import place, prefixed
from runner.errors import ConfigError
from runner.models import build_model, model_config
from runner.run_folder import CHECKPOINTS, LAST_CHECKPOINT, load_config

RUN_CHECKPOINT = Path(CHECKPOINTS) / LAST_CHECKPOINT


class FrozenTeacher:
    def __init__(self, source: str | None, teacher_model, trainer):
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
            model_cfg, weights = model_config(teacher_model, trainer.cfg.dataset, "distill.teacher_model"), path
        else:
            raise ConfigError(f"distill.teacher={source}: no such run folder or checkpoint file")
        if not weights.exists():
            raise ConfigError(f"distill.teacher={source}: {weights} is missing; did the teacher's run finish?")
        splits = trainer.splits
        model = build_model(model_cfg, splits.in_channels, splits.num_classes)
        payload = checkpoint.load(weights)
        try:
            model.load_state_dict(payload.get("model", payload))
        except RuntimeError as error:
            raise ConfigError(f"distill.teacher={source}: its weights do not fit a {splits.num_classes}-class "
                              f"{splits.in_channels}-channel {type(model).__name__} ({str(error).splitlines()[0]}); "
                              f"the teacher must be trained on the same dataset") from error
        self.model = place(model, trainer).eval().requires_grad_(False)
        self.metrics = prefixed(trainer.evaluate(self.model), "teacher")
        trainer.logger.print(f"divrun: teacher {source}: val acc {self.metrics['teacher/val/acc1']:.4f}")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) of a model exposing `features(x)` and `head` (every divrun model)."""
        features = self.model.features(images)
        return features, self.model.head(features)
