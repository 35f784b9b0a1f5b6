"""Model factories: each is the `_target_` of a `conf/model/*.yaml` (with `_partial_: true`) and is called
with `in_channels` and `num_classes`, which come from the dataset, never from the user."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig


def build_model(cfg: DictConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    return instantiate(cfg)(in_channels=in_channels, num_classes=num_classes)
