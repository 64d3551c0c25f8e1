"""SSDlite's backbone: torchvision's MobileNetV3-Large features + four depthwise extra blocks.

Mirrors ``torchvision.models.detection.ssdlite320_mobilenet_v3_large``: the
first map is the C4 block's 1x1 expansion output (672 channels, stride 16),
the second the last feature layer (960, stride 32), then four extra blocks
(1x1 to half, depthwise 3x3 stride 2, 1x1 out; BN + ReLU6) give 512, 256,
256 and 128 channels. At 320 px the maps are 20, 10, 5, 3, 2, 1.

Unlike torchvision's SSDlite built without pretrained weights, the tail is
never reduced, so ``--pretrained imagenet`` (ImageNet weights, loaded into
``features``) and ``--init`` see the same network either way. The tensors
under ``features.`` are named exactly as in ``torchvision.models.mobilenet_v3_large``.
``ReducedMobileNetV3Backbone`` is the network torchvision trained on COCO
(``--pretrained coco``): the last stage at half width, 480 channels instead of 960.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar, cast

from torch import Tensor, nn
from torchvision.models import MobileNet_V3_Large_Weights, WeightsEnum, mobilenet_v3_large
from torchvision.ops.misc import Conv2dNormActivation

# SSDlite's BatchNorm (torchvision ssdlite.py): faster running statistics than MobileNet's.
norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)

# Channels of the six maps the heads read.
SSDLITE_CHANNELS = (672, 960, 512, 256, 256, 128)


def normal_init(module: nn.Module, std: float = 0.03) -> None:
    """SSDlite's initialisation: every conv weight ~ N(0, std), biases 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def extra_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 to ``out/2``, depthwise 3x3 stride 2, 1x1 to ``out``: halves h and w (ceil)."""
    mid = out_channels // 2
    act = nn.ReLU6
    return nn.Sequential(
        Conv2dNormActivation(in_channels, mid, 1, norm_layer=norm_layer, activation_layer=act),
        Conv2dNormActivation(
            mid, mid, 3, stride=2, groups=mid, norm_layer=norm_layer, activation_layer=act
        ),
        Conv2dNormActivation(mid, out_channels, 1, norm_layer=norm_layer, activation_layer=act),
    )


class SeparableConv2d(nn.Sequential):
    """SSDlite's prediction block: depthwise 3x3 + BN + ReLU6, then a 1x1 conv.

    ``out_channels``, ``weight`` and ``bias`` are the 1x1 conv's, so code written
    for a plain conv head (e.g. setting class-prior biases) works on it too.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            Conv2dNormActivation(
                in_channels,
                in_channels,
                3,
                groups=in_channels,
                norm_layer=norm_layer,
                activation_layer=nn.ReLU6,
            ),
            nn.Conv2d(in_channels, out_channels, 1),
        )
        normal_init(self)

    @property
    def out_channels(self) -> int:
        return self._pointwise.out_channels

    @property
    def weight(self) -> nn.Parameter:
        return cast(nn.Parameter, self._pointwise.weight)

    @property
    def bias(self) -> nn.Parameter:
        return cast(nn.Parameter, self._pointwise.bias)

    @property
    def _pointwise(self) -> nn.Conv2d:
        return cast(nn.Conv2d, self[1])


def _c4_position(features: nn.Sequential) -> int:
    """Index of the last stride-2 block (torchvision's ``stage_indices[-2]``)."""
    strided = [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    return strided[-1]


class MobileNetV3Backbone(nn.Module):
    """Six maps of ``SSDLITE_CHANNELS``: S/16, S/32, then four halvings (20..1 at 320 px)."""

    imagenet_weights: ClassVar[WeightsEnum | None] = MobileNet_V3_Large_Weights.IMAGENET1K_V1
    reduced_tail: ClassVar[bool] = False  # last stage at half width (torchvision's option)

    def __init__(self) -> None:
        super().__init__()
        net = mobilenet_v3_large(norm_layer=norm_layer, reduced_tail=self.reduced_tail)
        self.features = net.features
        normal_init(self.features)  # torchvision's SSDlite does so when not pretrained
        self.c4 = _c4_position(self.features)
        if self.features[self.c4].use_res_connect:
            raise ValueError("MobileNetV3's C4 block must not be residual")
        last = cast(Conv2dNormActivation, self.features[-1]).out_channels
        channels = (SSDLITE_CHANNELS[0], last, *SSDLITE_CHANNELS[2:])
        self.extras = nn.ModuleList(
            [extra_block(channels[i], channels[i + 1]) for i in range(1, len(channels) - 1)]
        )
        normal_init(self.extras)

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, S, S]`` -> six maps, the first two tapped inside ``features``."""
        for block in self.features[: self.c4]:
            x = block(x)
        c4 = self.features[self.c4].block  # not residual: running its layers in two parts is it
        x = c4[0](x)  # the 1x1 expansion: (B, 672, S/16, S/16)
        feats = [x]
        x = c4[1:](x)
        for block in self.features[self.c4 + 1 :]:
            x = block(x)
        feats.append(x)
        for extra in self.extras:
            x = extra(x)
            feats.append(x)
        return feats


class ReducedMobileNetV3Backbone(MobileNetV3Backbone):
    """torchvision's COCO-trained SSDlite backbone: the last stage at half width, so the
    second map has 480 channels (``SSDLITE_REDUCED_CHANNELS``); no ImageNet weights."""

    imagenet_weights = None
    reduced_tail = True


# Channels of the six maps of ReducedMobileNetV3Backbone.
SSDLITE_REDUCED_CHANNELS = (672, 480, 512, 256, 256, 128)
