"""The MobileNetV2 of the CIFAR KD zoo (RepDistiller, after "Route Constrained Optimization"): expansion 6,
width 0.5, a 1280-d head."""
from __future__ import annotations

from torch import nn

from runner.models.layers import PooledClassifier, conv_bn_relu, init_like_reference


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


class MobileNetV2(PooledClassifier):
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
