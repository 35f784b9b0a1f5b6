"""torchvision's ImageNet models by name, built untrained with the dataset's class count."""
from __future__ import annotations

from torch import nn

from runner.errors import ConfigError


def torchvision_model(in_channels: int, num_classes: int, name: str, image_size: int = 224, **kwargs) -> nn.Module:
    import torchvision

    if in_channels != 3:
        raise ConfigError(f"model={name}: torchvision's models take 3-channel images, the dataset has "
                          f"{in_channels}; pick a dataset with RGB images or another model")
    if name.startswith("vit"):
        kwargs.setdefault("image_size", image_size)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
