"""DenseNet-BC (Huang et al. 2017) for 32x32 inputs, in kuangliu/pytorch-cifar's layout: a 3x3 stem, growth 32,
compression 0.5; DenseNet-121 is 6/12/24/16 blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.errors import ConfigError
from runner.models.layers import PooledClassifier


class DenseLayer(nn.Module):
    """BN-ReLU-conv1x1 (4k channels), BN-ReLU-conv3x3 (k channels), concatenated to the input."""

    def __init__(self, in_planes: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Sequential):
    def __init__(self, in_planes: int, out_planes: int):
        super().__init__(nn.BatchNorm2d(in_planes), nn.ReLU(), nn.Conv2d(in_planes, out_planes, 1, bias=False),
                         nn.AvgPool2d(2))


class DenseNet(PooledClassifier):
    def __init__(self, in_channels: int, num_classes: int, blocks=(6, 12, 24, 16), growth: int = 32,
                 reduction: float = 0.5):
        super().__init__()
        planes = 2 * growth
        layers = [nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)]
        for i, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(planes, growth))
                planes += growth
            if i < len(blocks) - 1:
                out_planes = int(planes * reduction)
                layers.append(Transition(planes, out_planes))
                planes = out_planes
        layers += [nn.BatchNorm2d(planes), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(planes, num_classes)


DENSENET_LAYOUTS = {121: (6, 12, 24, 16), 169: (6, 12, 32, 32), 201: (6, 12, 48, 32)}


def densenet(in_channels: int, num_classes: int, depth: int = 121, growth: int = 32) -> DenseNet:
    if depth not in DENSENET_LAYOUTS:
        raise ConfigError(f"model.depth={depth}: choose one of {sorted(DENSENET_LAYOUTS)}")
    return DenseNet(in_channels, num_classes, DENSENET_LAYOUTS[depth], growth)
