"""Model factories: each is the `_target_` of a `conf/model/*.yaml` (with `_partial_: true`) and is called
with `in_channels` and `num_classes`, which come from the dataset, never from the user.

One module per family: small (digits' CNN and MLP), resnet_cifar (He et al.'s, the CIFAR ResNet-18/34/50,
the KD zoo's), preact_resnet, wrn, vgg (both layouts), densenet, mobilenet, shufflenet, airbench, tv
(torchvision's); layers.py holds the shared pooled-classifier shape and blocks. Every model but torchvision's
exposes `features(x)` (the penultimate vector) and a linear `head`.
"""
from __future__ import annotations

import contextlib

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError


def build_model(cfg: DictConfig, in_channels: int, num_classes: int, device: str | None = None) -> torch.nn.Module:
    """The model of `cfg`; `device="meta"` builds its structure only (the pre-flight's check, no memory)."""
    with torch.device(device) if device else contextlib.nullcontext():
        return instantiate(cfg)(in_channels=in_channels, num_classes=num_classes)


def model_config(choice: str, dataset: DictConfig, key: str = "model") -> DictConfig:
    """A second model's config by its `conf/model` option name, composed as `model=<name>` would be, with
    interpolations such as ${dataset.image_size} resolved against `dataset`."""
    from hydra.errors import MissingConfigException

    from runner.config import compose

    try:
        model = compose(f"model={choice}").model
    except MissingConfigException as error:
        raise ConfigError(f"{key}={choice}: no such model; pick one of `divrun --help`'s model options") from error
    node = OmegaConf.create({"model": OmegaConf.to_container(model),
                             "dataset": OmegaConf.to_container(dataset, resolve=True)})
    return OmegaConf.create(OmegaConf.to_container(node.model, resolve=True))
