"""torchvision's ImageNet models by name, built untrained with the dataset's class count."""
from __future__ import annotations

from torch import nn


def torchvision_model(in_channels: int, num_classes: int, name: str, image_size: int = 224, **kwargs) -> nn.Module:
    import torchvision

    if name.startswith("vit"):
        kwargs.setdefault("image_size", image_size)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        raise ValueError(f"model={name}: torchvision's models take 3-channel images, the dataset has "
                         f"{in_channels}; pick a dataset with RGB images or another model")
    return model
