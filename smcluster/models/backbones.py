"""Backbones: torchvision ResNet-18/34/50 and a small CNN for tiny grey images.

METHOD.md, Stage 1, Backbone: ResNets at native size with the usual small-image stem (3x3
convolution, no max-pool) for 32-96 px images, and a small CNN that a CPU can train for
images of 32 px or less. Every backbone starts with a fixed per-channel normalisation whose
mean and standard deviation are buffers, so a saved model normalises new images the way it
normalised its training data. Convolutions run in channels-last layout, 1.3-2x faster on a
CPU for the small CNN and the usual choice for mixed precision on GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchvision
from torch import Tensor, nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with the statistics stored as buffers."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, channels, 1, 1), 0.25))

    @torch.no_grad()
    def fit(self, images: Tensor) -> None:
        """Set the statistics from a float batch in [0, 1] (N x C x H x W)."""
        self.mean.copy_(images.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Backbone(nn.Module):
    """Normalisation followed by a feature trunk; ``out_dim`` is the feature size."""

    def __init__(self, trunk: nn.Module, out_dim: int, channels: int) -> None:
        super().__init__()
        self.normalize = Normalize(channels)
        self.trunk = trunk
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.normalize(x).contiguous(memory_format=torch.channels_last)
        return self.trunk(x)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def small_cnn(channels: int, width: int = 32, small_stem: bool = True) -> tuple[nn.Module, int]:
    """Three stages of two 3x3 convolutions (width, 2 width, 4 width), pooled to a vector."""
    del small_stem
    w = width
    trunk = nn.Sequential(
        _conv_block(channels, w),
        _conv_block(w, w),
        nn.MaxPool2d(2),
        _conv_block(w, 2 * w),
        _conv_block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        _conv_block(2 * w, 4 * w),
        _conv_block(4 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return trunk, 4 * w


def _resnet(factory: Callable[..., nn.Module]) -> Callable[..., tuple[nn.Module, int]]:
    def build(channels: int, width: int = 64, small_stem: bool = False) -> tuple[nn.Module, int]:
        del width
        net = factory(weights=None)
        if small_stem:
            net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, stride=2, padding=3, bias=False)
        out_dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, out_dim

    return build


BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "small_cnn": small_cnn,
    "resnet18": _resnet(torchvision.models.resnet18),
    "resnet34": _resnet(torchvision.models.resnet34),
    "resnet50": _resnet(torchvision.models.resnet50),
}


def build_backbone(
    name: str, channels: int, *, width: int = 32, small_stem: bool = True
) -> Backbone:
    """Build a registered backbone for ``channels``-channel input."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    trunk, out_dim = BACKBONES[name](channels, width=width, small_stem=small_stem)
    return Backbone(trunk.to(memory_format=torch.channels_last), out_dim, channels)
