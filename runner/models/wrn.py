"""Wide residual networks (Zagoruyko and Komodakis, 2016): pre-activation blocks, depth 6n+4, width k; also the
CIFAR KD zoo's wrn_16_2, wrn_40_1 and wrn_40_2 (RepDistiller's layouts and parameter counts)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from runner.errors import ConfigError


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.shortcut = None if stride == 1 and in_planes == planes else \
            nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x), inplace=False)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out), inplace=True)))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, width: int = 10, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"model.depth={depth}: wide ResNets have depth 6n+4 (16, 28, 40)")
        n, widths = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        blocks, in_planes = [], widths[0]
        for stage, planes in enumerate(widths[1:]):
            for j in range(n):
                blocks.append(WideBlock(in_planes, planes, 2 if stage > 0 and j == 0 else 1, dropout))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.head = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))), inplace=True)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
