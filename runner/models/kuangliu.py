"""CIFAR models in the layout of kuangliu/pytorch-cifar, which many optimizer papers train (AdaBelief, diffGrad,
PS-KD): 32x32 inputs, 3x3 stems, no max-pool stem.

- `vgg`: VGG-11/13/16/19 with batch norm (Simonyan & Zisserman 2015), a 512-wide linear head.
- `densenet`: DenseNet-BC (Huang et al. 2017), growth 32, compression 0.5; DenseNet-121 is 6/12/24/16 blocks.
- `preact_resnet`: pre-activation ResNet-18/34 (He et al. 2016, "Identity mappings"), with the final
  BN-ReLU of the paper (kuangliu's copy omits it).
Every model exposes `features(x)` (the penultimate vector) and `head` (the classifier).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from runner.errors import ConfigError

VGG_LAYOUTS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class PooledClassifier(nn.Module):
    """`body` (a conv stack), global average pooling, `head`: the shape shared by the three nets below."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class VGG(PooledClassifier):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 11):
        super().__init__()
        if depth not in VGG_LAYOUTS:
            raise ConfigError(f"model.depth={depth}: choose one of {sorted(VGG_LAYOUTS)}")
        layers, channels = [], in_channels
        for item in VGG_LAYOUTS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)


def vgg(in_channels: int, num_classes: int, depth: int = 11) -> VGG:
    return VGG(in_channels, num_classes, depth)


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


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and in_planes == planes else \
            nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


PREACT_LAYOUTS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class PreActResNet(PooledClassifier):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 18):
        super().__init__()
        if depth not in PREACT_LAYOUTS:
            raise ConfigError(f"model.depth={depth}: choose one of {sorted(PREACT_LAYOUTS)}")
        blocks, in_planes = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)], 64
        for stage, count in enumerate(PREACT_LAYOUTS[depth]):
            planes = 64 * 2 ** stage
            for j in range(count):
                blocks.append(PreActBlock(in_planes, planes, 2 if stage > 0 and j == 0 else 1))
                in_planes = planes
        blocks += [nn.BatchNorm2d(in_planes), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(in_planes, num_classes)


def preact_resnet(in_channels: int, num_classes: int, depth: int = 18) -> PreActResNet:
    return PreActResNet(in_channels, num_classes, depth)
