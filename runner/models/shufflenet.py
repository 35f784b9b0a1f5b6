"""ShuffleNet V1 (groups 3, 240/480/960) and V2 (1x: 116/232/464, 1024-d head) of the CIFAR KD zoo
(RepDistiller's layouts)."""
from __future__ import annotations

import torch
from torch import nn

from runner.models.layers import PooledClassifier, conv_bn_relu


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups' channels (ShuffleNet's shuffle)."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 (ungrouped right after the stem), shuffle, 3x3 depthwise, grouped 1x1; a stride-2 block
    concatenates an average-pooled shortcut instead of adding it."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, after_stem: bool):
        super().__init__()
        mid = out_channels // 4
        self.first_groups = 1 if after_stem else groups
        self.stride = stride
        self.reduce = nn.Sequential(*conv_bn_relu(in_channels, mid, 1, groups=self.first_groups))
        self.rest = nn.Sequential(*conv_bn_relu(mid, mid, 3, stride, groups=mid),
                                  *conv_bn_relu(mid, out_channels, 1, groups=groups, relu=False))
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x):
        out = self.rest(channel_shuffle(self.reduce(x), self.first_groups))
        shortcut = self.shortcut(x)
        return torch.relu(torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut)


class ShuffleNetV1(PooledClassifier):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (240, 480, 960),
                 blocks: tuple[int, ...] = (4, 8, 4), groups: int = 3, stem_width: int = 24):
        super().__init__()
        layers, channels = conv_bn_relu(in_channels, stem_width, 1), stem_width
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for i in range(count):
                # the first block of a stage concatenates its input, so it only adds width - channels maps
                out = width - channels if i == 0 else width
                layers.append(ShuffleV1Block(channels, out, 2 if i == 0 else 1, groups, stage == 0 and i == 0))
                channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)


def shufflenetv1(in_channels: int, num_classes: int, groups: int = 3) -> ShuffleNetV1:
    return ShuffleNetV1(in_channels, num_classes, groups=groups)


class ShuffleV2Block(nn.Module):
    """Split the channels in half, transform one half (1x1, 3x3 depthwise, 1x1), concatenate, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*conv_bn_relu(half, half, 1), *conv_bn_relu(half, half, 3, groups=half, relu=False),
                                    *conv_bn_relu(half, half, 1))

    def forward(self, x):
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input and each yields half of the output channels."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(*conv_bn_relu(in_channels, in_channels, 3, 2, groups=in_channels, relu=False),
                                  *conv_bn_relu(in_channels, mid, 1))
        self.right = nn.Sequential(*conv_bn_relu(in_channels, mid, 1),
                                   *conv_bn_relu(mid, mid, 3, 2, groups=mid, relu=False), *conv_bn_relu(mid, mid, 1))

    def forward(self, x):
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(PooledClassifier):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (116, 232, 464),
                 blocks: tuple[int, ...] = (3, 7, 3), last_width: int = 1024, stem_width: int = 24):
        super().__init__()
        layers, channels = conv_bn_relu(in_channels, stem_width, 1), stem_width
        for width, count in zip(widths, blocks):
            layers.append(ShuffleV2Down(channels, width))
            layers += [ShuffleV2Block(width) for _ in range(count)]
            channels = width
        self.body = nn.Sequential(*layers, *conv_bn_relu(channels, last_width, 1))
        self.head = nn.Linear(last_width, num_classes)


def shufflenetv2(in_channels: int, num_classes: int) -> ShuffleNetV2:
    return ShuffleNetV2(in_channels, num_classes)
