"""Pre-activation ResNet-18/34 (He et al. 2016, "Identity mappings") for 32x32 inputs, in kuangliu/pytorch-cifar's
layout, with the final BN-ReLU of the paper (kuangliu's copy omits it)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from runner.errors import ConfigError
from runner.models.layers import PooledClassifier


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
