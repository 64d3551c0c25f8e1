"""The paper's SSD300 backbone: VGG16 (conv4_3 L2-normalised, dilated fc6/fc7) + extra layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

# VGG16 up to conv5_3; "M" is a 2x2 max pool, "C" the same with ceil_mode (38 -> 19 at 300 px).
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "C", 512, 512, 512, "M", 512, 512, 512]


def _vgg_layers(cfg: list) -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v in ("M", "C"):
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=v == "C"))
        else:
            layers += [nn.Conv2d(in_channels, v, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = v
    return layers


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (initially 20)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.weight[None, :, None, None]


def _extra(in_ch: int, mid: int, out_ch: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, mid, 1),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out_ch, 3, stride=stride, padding=padding),
        nn.ReLU(inplace=True),
    )


class VGG16Backbone(nn.Module):
    """Six maps: 38, 19, 10, 5, 3, 1 at 300 px (channels 512, 1024, 512, 256, 256, 256)."""

    def __init__(self) -> None:
        super().__init__()
        layers = _vgg_layers(_VGG16)
        split = 23  # after conv4_3 + ReLU
        self.conv4 = nn.Sequential(*layers[:split])
        self.conv5 = nn.Sequential(*layers[split:])
        self.l2norm = L2Norm(512)
        self.fc7 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
        )
        self.extras = nn.ModuleList(
            [
                _extra(1024, 256, 512, stride=2, padding=1),
                _extra(512, 128, 256, stride=2, padding=1),
                _extra(256, 128, 256, stride=1, padding=0),
                _extra(256, 128, 256, stride=1, padding=0),
            ]
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv4(x)
        feats = [self.l2norm(x)]
        x = self.fc7(self.conv5(x))
        feats.append(x)
        for extra in self.extras:
            x = extra(x)
            feats.append(x)
        return feats
