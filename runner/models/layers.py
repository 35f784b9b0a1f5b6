"""Building blocks shared by the CIFAR models: the pooled-classifier shape, conv-BN-ReLU stacks, and the
weight init of the RepDistiller code base."""
from __future__ import annotations

import torch
from torch import nn


class PooledClassifier(nn.Module):
    """`body` (a conv stack), global average pooling (adaptive: any input size), a linear `head`; `features(x)`
    is the pooled, flattened penultimate vector."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


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
