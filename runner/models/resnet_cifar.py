"""ResNets for 32x32 images.

- `resnet_he`: He et al. (2016), section 4.2: 6n+2 layers, stages of 16/32/64 channels, identity shortcuts
  with zero-padded channels (option A), e.g. resnet20 (n=3, 0.27M parameters), resnet56, resnet110.
- `resnet_cifar`: the ImageNet ResNet-18/34/50 layout with a 3x3 stem and no max-pool, as used by most
  CIFAR optimizer papers (kuangliu/pytorch-cifar layout; ResNet-18 has 11.2M parameters).
- `resnet_kd`: the CIFAR KD zoo's (HobbitLong/RepDistiller `models/`): resnet8x4, resnet32x4, resnet20/32/56/110.
  Unlike He et al.'s option-A nets their downsampling shortcuts are 1x1 conv + BN, and the x4 nets have a
  32-channel stem before stages of 64/128/256 (hence the `kd_` prefix of their configs).
Every model exposes `features(x)` (the penultimate vector) and `head` (the classifier).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from runner.errors import ConfigError
from runner.models.layers import init_like_reference


class PadShortcut(nn.Module):
    """Option A: subsample spatially and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x):
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = make_shortcut(in_planes, planes * self.expansion, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = make_shortcut(in_planes, planes * 4, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x), inplace=True)


def make_shortcut(in_planes: int, out_planes: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(out_planes - in_planes)
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """A 3x3 stem (`stem_width` channels, default the first stage's), then stages of residual blocks,
    global pooling and a linear head."""

    def __init__(self, block, blocks_per_stage, widths, in_channels: int, num_classes: int,
                 shortcut: str = "conv", stem_width: int | None = None):
        super().__init__()
        stem_width = stem_width or widths[0]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True))
        stages, in_planes = [], stem_width
        for i, (width, count) in enumerate(zip(widths, blocks_per_stage)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(block(in_planes, width, stride, shortcut))
                in_planes = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(in_planes, num_classes)
        init_like_reference(self, linear_std=None)  # torch's default init for the head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet_he(in_channels: int, num_classes: int, depth: int = 20) -> ResNet:
    """He et al.'s CIFAR ResNet with depth 6n+2 (20, 32, 44, 56, 110)."""
    if (depth - 2) % 6:
        raise ConfigError(f"model.depth={depth}: He et al.'s CIFAR ResNets have depth 6n+2 (20, 32, 56, 110)")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [16, 32, 64], in_channels, num_classes, shortcut="pad")


CIFAR_LAYOUTS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


def resnet_cifar(in_channels: int, num_classes: int, depth: int = 18) -> ResNet:
    """ResNet-18/34/50 with a 3x3 stem and no max-pool, for 32x32 inputs."""
    if depth not in CIFAR_LAYOUTS:
        raise ConfigError(f"model.depth={depth}: choose one of {sorted(CIFAR_LAYOUTS)}")
    block, layout = CIFAR_LAYOUTS[depth]
    return ResNet(block, layout, [64, 128, 256, 512], in_channels, num_classes)


def resnet_kd(in_channels: int, num_classes: int, depth: int = 20, stem_width: int = 16,
              widths: tuple[int, ...] = (16, 32, 64)) -> ResNet:
    """RepDistiller's `resnet<depth>` (stem 16, stages 16/32/64) and `resnet<depth>x4` (stem 32, 64/128/256)."""
    if (depth - 2) % 6:
        raise ConfigError(f"model.depth={depth}: these CIFAR ResNets have depth 6n+2 (8, 20, 32, 56, 110)")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, list(widths), in_channels, num_classes, shortcut="conv",
                  stem_width=stem_width)
