"""The airbench94 network (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024;
KellerJordan/cifar10-airbench `legacy/airbench94.py`), written from its description.

- A 2x2 whitening conv (stride 1, no padding) with frozen weights: the eigenvectors of the training
  images' 2x2-patch second-moment matrix, scaled by 1/sqrt(eigenvalue + eps), stacked with their negatives
  (so GELU passes both signs). They are set by `init_from_data`, which the run's builder calls once with
  normalised training images. Its bias trains for the first `whiten_bias_epochs` epochs, then freezes
  (`set_epoch`, called by the train loop).
- Three conv groups: conv3x3 -> max-pool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU. Convs have no bias and
  a dirac (identity) init on their first `in_channels` filters; BN uses eps 1e-12, airbench's momentum
  (0.6 for the running average, i.e. torch momentum 0.4) and a frozen unit weight (only the bias learns).
- A global max-pool (airbench's MaxPool2d(3) on the 3x3 map of a 32x32 input), a bias-free linear head
  and a fixed output scale (1/9).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BatchNorm(nn.BatchNorm2d):
    """BatchNorm with airbench's settings: `momentum` weighs the old running average, the weight stays 1."""

    def __init__(self, channels: int, momentum: float, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


def dirac_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, 3, padding="same", bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(in_channels, out_channels)])
    return conv


class ConvGroup(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float):
        super().__init__(dirac_conv(in_channels, out_channels), nn.MaxPool2d(2),
                         BatchNorm(out_channels, bn_momentum), nn.GELU(),
                         dirac_conv(out_channels, out_channels), BatchNorm(out_channels, bn_momentum), nn.GELU())


def patch_whitening(images: torch.Tensor, kernel_size: int, eps: float) -> torch.Tensor:
    """Filters W (C*k*k, C, k, k) with W x = diag(lambda + eps)^-1/2 V^T x for every k x k patch x, where
    V, lambda are the eigenvectors/values (largest first) of the patches' second moment E[x x^T]."""
    channels = images.shape[1]
    patches = images.float().unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * kernel_size ** 2)
    second_moment = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(second_moment)  # ascending
    filters = (eigenvectors / (eigenvalues + eps).sqrt()).T.flip(0)
    return filters.reshape(-1, channels, kernel_size, kernel_size)


class AirBench94(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 bn_momentum: float = 0.6, scaling_factor: float = 1 / 9, whiten_kernel_size: int = 2,
                 whiten_eps: float = 5e-4, whiten_bias_epochs: int = 3):
        super().__init__()
        whiten_width = 2 * in_channels * whiten_kernel_size ** 2
        self.whiten = nn.Conv2d(in_channels, whiten_width, whiten_kernel_size, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.whiten_eps, self.whiten_bias_epochs = whiten_eps, whiten_bias_epochs
        widths = [whiten_width, *widths]
        self.features = nn.Sequential(
            nn.GELU(), *(ConvGroup(a, b, bn_momentum) for a, b in zip(widths, widths[1:])),
            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[-1], num_classes, bias=False)
        self.scaling_factor = scaling_factor

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set the whitening filters from (normalised) training images; called once before training."""
        filters = patch_whitening(images, self.whiten.kernel_size[0], self.whiten_eps)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def set_epoch(self, epoch: int) -> None:
        self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.whiten(x))) * self.scaling_factor
