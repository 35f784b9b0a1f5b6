"""The CIFAR knowledge-distillation model zoo, with the layer layouts of the CRD / RepDistiller code base
(HobbitLong/RepDistiller `models/`), whose tables most KD papers copy: same layers, same parameter counts
(tests/test_zoo.py checks them against counts printed by the reference definitions).

- `resnet_kd`: RepDistiller's CIFAR ResNets (resnet8x4, resnet32x4, resnet20/32/56/110). Unlike He et al.'s
  option-A nets (`resnet_he`, conf/model/resnet20.yaml) their downsampling shortcuts are 1x1 conv + BN, and
  the x4 nets have a 32-channel stem before stages of 64/128/256; hence the `kd_` prefix of their configs.
- `vgg`: VGG-8 / VGG-13 with BatchNorm and no FC stack (512 -> classes).
- `mobilenetv2`: the MobileNetV2 of "Route Constrained Optimization" (expansion 6, width 0.5, 1280-d head).
- `shufflenetv1` (groups 3, 240/480/960) and `shufflenetv2` (1x: 116/232/464, 1024-d head).
The wide ResNets of the zoo (wrn_16_2, wrn_40_1, wrn_40_2) are `runner.models.wrn.WideResNet`.
Global average pooling is adaptive, so 32x32 inputs match the reference and other sizes also work.
Every model exposes `features(x)` (the penultimate vector) and `head` (the classifier).
"""
from __future__ import annotations

import torch
from torch import nn

from runner.errors import ConfigError
from runner.models.resnet_cifar import BasicBlock, ResNet


def resnet_kd(in_channels: int, num_classes: int, depth: int = 20, stem_width: int = 16,
              widths: tuple[int, ...] = (16, 32, 64)) -> ResNet:
    """RepDistiller's `resnet<depth>` (stem 16, stages 16/32/64) and `resnet<depth>x4` (stem 32, 64/128/256)."""
    if (depth - 2) % 6:
        raise ConfigError(f"model.depth={depth}: these CIFAR ResNets have depth 6n+2 (8, 20, 32, 56, 110)")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, list(widths), in_channels, num_classes, shortcut="conv",
                  stem_width=stem_width)


def init_like_reference(model: nn.Module, linear_std: float | None) -> None:
    """He-normal convs (fan-out), unit BatchNorm, and (when given) N(0, std) linear weights, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g*c, H, W) -> interleave the g groups' channels (ShuffleNet's shuffle)."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class Pooled(nn.Module):
    """Shared tail: `body` maps images to a feature map; global average pooling; a linear `head`."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---- VGG ----------------------------------------------------------------------------------------------
VGG_LAYOUTS = {
    8: [[64], [128], [256], [512], [512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
}


class VGG(Pooled):
    """Five blocks of 3x3 conv (with bias) + BN + ReLU; max-pooling after the first three blocks (and after the
    fourth for inputs of 64 pixels or more, as the reference does for 64x64 images), then global pooling."""

    def __init__(self, in_channels: int, num_classes: int, depth: int = 8, image_size: int = 32):
        super().__init__()
        if depth not in VGG_LAYOUTS:
            raise ConfigError(f"model.depth={depth}: choose one of {sorted(VGG_LAYOUTS)}")
        layers, channels = [], in_channels
        for block, widths in enumerate(VGG_LAYOUTS[depth]):
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
                channels = width
            if block < 3 or (block == 3 and image_size >= 64):
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)
        init_like_reference(self, linear_std=0.01)


# ---- MobileNetV2 --------------------------------------------------------------------------------------
def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class InvertedResidual(nn.Module):
    """1x1 expansion (always present, also for ratio 1), 3x3 depthwise, linear 1x1 projection; identity
    shortcut when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(*conv_bn_relu(in_channels, hidden, 1),
                                  *conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                                  *conv_bn_relu(hidden, out_channels, 1, relu=False))

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(Pooled):
    # (expansion, channels, blocks, first stride); expansion None = the model's `expansion`
    SETTINGS = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2), (None, 96, 3, 1),
                (None, 160, 3, 2), (None, 320, 1, 1)]

    def __init__(self, in_channels: int, num_classes: int, expansion: int = 6, width: float = 0.5):
        super().__init__()
        channels = int(32 * width)
        layers = conv_bn_relu(in_channels, channels, 3, stride=2)
        for ratio, base, blocks, stride in self.SETTINGS:
            out = int(base * width)
            for i in range(blocks):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, ratio or expansion))
                channels = out
        last = int(1280 * width) if width > 1.0 else 1280
        self.body = nn.Sequential(*layers, *conv_bn_relu(channels, last, 1))
        self.head = nn.Linear(last, num_classes)
        init_like_reference(self, linear_std=0.01)


def mobilenetv2(in_channels: int, num_classes: int, expansion: int = 6, width: float = 0.5) -> MobileNetV2:
    return MobileNetV2(in_channels, num_classes, expansion, width)


# ---- ShuffleNet V1 ------------------------------------------------------------------------------------
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


class ShuffleNetV1(Pooled):
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


# ---- ShuffleNet V2 ------------------------------------------------------------------------------------
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


class ShuffleNetV2(Pooled):
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
