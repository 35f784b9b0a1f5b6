"""Model factories: each is the `_target_` of a `conf/model/*.yaml` (with `_partial_: true`) and is called
with `in_channels` and `num_classes`, which come from the dataset, never from the user."""
from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError


def build_model(cfg: DictConfig, in_channels: int, num_classes: int) -> torch.nn.Module:
    return instantiate(cfg)(in_channels=in_channels, num_classes=num_classes)


def model_config(choice: str, dataset: DictConfig, key: str = "model") -> DictConfig:
    """A second model's config by its `conf/model` option name, composed as `model=<name>` would be, with
    interpolations such as ${dataset.image_size} resolved against `dataset`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import MissingConfigException

    def compose_model():
        try:
            return compose("config", overrides=[f"model={choice}"]).model
        except MissingConfigException as error:
            raise ConfigError(f"{key}={choice}: no such model; pick one of `divrun --help`'s model options") from error

    if GlobalHydra.instance().is_initialized():
        model = compose_model()
    else:
        with initialize_config_module("runner.conf", version_base="1.3"):
            model = compose_model()
    node = OmegaConf.create({"model": OmegaConf.to_container(model),
                             "dataset": OmegaConf.to_container(dataset, resolve=True)})
    return OmegaConf.create(OmegaConf.to_container(node.model, resolve=True))
