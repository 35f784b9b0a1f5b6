"""VGG with batch norm (Simonyan & Zisserman 2015) for small images, in the two layouts papers train:

- `vgg` (VGG-11/13/16/19): kuangliu/pytorch-cifar's, which many optimizer papers train (AdaBelief, diffGrad,
  PS-KD): bias-free convs, a max-pool after each of the five blocks, a 512-wide linear head, torch's init.
- `vgg_kd` (VGG-8/13): RepDistiller's (the CIFAR KD zoo): convs with bias, max-pooling after the first three
  blocks (and the fourth for inputs of 64 pixels or more, as the reference does for 64x64 images), global
  pooling, He-normal convs and N(0, 0.01) linear weights.
"""
from __future__ import annotations

from torch import nn

from runner.errors import ConfigError
from runner.models.layers import PooledClassifier, init_like_reference

# conv widths of the five blocks
VGG_BLOCKS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


class VGG(PooledClassifier):
    """Blocks of 3x3 conv + BN + ReLU, a max-pool after each of the first `pooled_blocks` blocks, global
    pooling, a linear head."""

    def __init__(self, in_channels: int, num_classes: int, blocks: list[list[int]], pooled_blocks: int,
                 conv_bias: bool):
        super().__init__()
        layers, channels = [], in_channels
        for block, widths in enumerate(blocks):
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
            if block < pooled_blocks:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)


def _blocks(depth: int, depths: tuple[int, ...]) -> list[list[int]]:
    if depth not in depths:
        raise ConfigError(f"model.depth={depth}: choose one of {sorted(depths)}")
    return VGG_BLOCKS[depth]


def vgg(in_channels: int, num_classes: int, depth: int = 11) -> VGG:
    """kuangliu/pytorch-cifar's VGG-11/13/16/19."""
    return VGG(in_channels, num_classes, _blocks(depth, (11, 13, 16, 19)), pooled_blocks=5, conv_bias=False)


def vgg_kd(in_channels: int, num_classes: int, depth: int = 8, image_size: int = 32) -> VGG:
    """RepDistiller's VGG-8/13."""
    model = VGG(in_channels, num_classes, _blocks(depth, (8, 13)), pooled_blocks=4 if image_size >= 64 else 3,
                conv_bias=True)
    init_like_reference(model, linear_std=0.01)
    return model
