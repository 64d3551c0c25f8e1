"""ResNet backbones for SSD: torchvision's ResNet stages + three extra layers.

The heads read ``layer2`` (stride 8), ``layer3`` (16) and ``layer4`` (32),
then three extra blocks (1x1 conv to half, 3x3 stride-2 conv; BN + ReLU, as
SSD300's extras with BatchNorm) halve the map three more times: six maps,
38, 19, 10, 5, 3, 2 at 300 px. ``avgpool`` and ``fc`` are left out; every
other tensor is named exactly as in ``torchvision.models.resnet18`` /
``resnet50``, so their ImageNet weights load by name (``--pretrained``).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torchvision.models import (
    ResNet,
    ResNet18_Weights,
    ResNet50_Weights,
    WeightsEnum,
    resnet18,
    resnet50,
)

from .conv import Conv2d

# Channels of the six maps the heads read: layer2, layer3, layer4, three extras.
RESNET18_CHANNELS = (128, 256, 512, 256, 256, 128)
RESNET50_CHANNELS = (512, 1024, 2048, 512, 256, 256)


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv to ``out/2``, 3x3 stride-2 conv to ``out``; BN + ReLU after each."""
    mid = out_channels // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, mid, 1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        Conv2d(mid, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResNetBackbone(nn.Module):
    """Six maps: S/8, S/16, S/32 from the ResNet, then three halvings (ceil)."""

    imagenet_weights: ClassVar[WeightsEnum]

    def __init__(self, net: ResNet, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.extras = nn.ModuleList(
            [extra_block(channels[i], channels[i + 1]) for i in range(2, len(channels) - 1)]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, S, S]`` -> six maps (layer2, layer3, layer4, extras)."""
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        feats = []
        for layer in (self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        for extra in self.extras:
            x = extra(x)
            feats.append(x)
        return feats


class ResNet18Backbone(ResNetBackbone):
    """``ResNetBackbone`` on torchvision's ResNet-18: ``RESNET18_CHANNELS``."""

    imagenet_weights = ResNet18_Weights.IMAGENET1K_V1

    def __init__(self) -> None:
        super().__init__(resnet18(), RESNET18_CHANNELS)


class ResNet50Backbone(ResNetBackbone):
    """``ResNetBackbone`` on torchvision's ResNet-50: ``RESNET50_CHANNELS``."""

    imagenet_weights = ResNet50_Weights.IMAGENET1K_V1

    def __init__(self) -> None:
        super().__init__(resnet50(), RESNET50_CHANNELS)
