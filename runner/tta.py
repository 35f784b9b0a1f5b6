"""Test-time augmentation: logits averaged over weighted views of each image (airbench's levels).

level 0: the image. level 1: the image and its mirror, 1/2 each. level 2: half the weight on level 1,
half on level 1 of the image translated by one pixel up-left and down-right (reflect padding), 1/4 each:
six views in all. One forward per view keeps the memory of a plain evaluation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LEVELS = (0, 1, 2)  # trainer.tta (checked by runner/validate.py)


def views(images: torch.Tensor, level: int) -> list[tuple[float, torch.Tensor]]:
    if level == 0:
        return [(1.0, images)]
    mirrored = [(0.5, images), (0.5, images.flip(-1))]
    if level == 1:
        return mirrored
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2:, 2:]]
    return ([(weight / 2, view) for weight, view in mirrored]
            + [(weight / 4, view) for image in shifted for weight, view in views(image, 1)])


def tta_logits(model: torch.nn.Module, images: torch.Tensor, level: int) -> torch.Tensor:
    """The weighted mean of the model's float32 logits over the views of `level`."""
    if level == 0:
        return model(images).float()
    return sum(weight * model(view).float() for weight, view in views(images, level))
