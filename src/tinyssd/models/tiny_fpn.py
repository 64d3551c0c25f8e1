"""TinySSD's successor backbone: strided 3x3 convs, a small FPN neck, five maps.

In the chapter's spirit (plain 3x3 conv + BN + ReLU blocks, five feature maps
read by 3x3 conv heads), with what makes a small detector accurate and fast on
a CPU: downsampling by stride-2 convolutions instead of full-resolution convs
and max pooling (about a quarter of TinySSD's multiply-adds at 256 px), and a
top-down FPN path so the fine maps that find small objects also see context.
With ``p2`` the top-down path goes one level further, to a sixth map at S/4
(``tiny_fpn_p2``): anchors on a 4-px grid for objects of about 8-12 px.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from .conv import Conv2d

# Feature channels of every map the heads read.
FPN_CHANNELS = 96


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias), BatchNorm, ReLU; ``stride`` 2 halves h and w."""
    return nn.Sequential(
        Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def stage(in_channels: int, out_channels: int, depth: int) -> nn.Sequential:
    """A stride-2 conv then ``depth - 1`` convs at the new resolution."""
    blocks = [conv_bn_relu(in_channels, out_channels, stride=2)]
    blocks += [conv_bn_relu(out_channels, out_channels) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class TinyFPNBackbone(nn.Module):
    """Five maps of ``FPN_CHANNELS``: S/8, S/16, S/32, S/64, S/128 (32..2 at 256 px).

    Bottom-up: stem to S/4 (16, 32 channels), then stages to S/8 (64), S/16
    (128), S/32 (192). Top-down: 1x1 laterals, nearest upsampling and sums,
    a 3x3 conv on each sum; two stride-2 convs add the S/64 and S/128 maps.
    With ``p2``, six maps: the top-down path also reaches the stem's S/4 output
    (64 at 256 px) through its own lateral and 3x3 conv; the five other maps and
    their parameter names are those of the model without it.
    """

    def __init__(self, p2: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, 16, stride=2), stage(16, 32, 2))
        self.c3 = stage(32, 64, 3)
        self.c4 = stage(64, 128, 2)
        self.c5 = stage(128, 192, 2)
        self.laterals = nn.ModuleList([nn.Conv2d(c, FPN_CHANNELS, 1) for c in (64, 128, 192)])
        self.smooth = nn.ModuleList([conv_bn_relu(FPN_CHANNELS, FPN_CHANNELS) for _ in range(3)])
        self.p6 = conv_bn_relu(FPN_CHANNELS, FPN_CHANNELS, stride=2)
        self.p7 = conv_bn_relu(FPN_CHANNELS, FPN_CHANNELS, stride=2)
        # apart from the lists above, so that tiny_fpn's checkpoints keep their names
        self.lateral2 = nn.Conv2d(32, FPN_CHANNELS, 1) if p2 else None
        self.smooth2 = conv_bn_relu(FPN_CHANNELS, FPN_CHANNELS) if p2 else None

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, S, S]`` -> ``Tensor[B, FPN_CHANNELS, S/2^k, S/2^k]``, k = 3..7
        (k = 2..7 with ``p2``)."""
        c2 = self.stem(x)
        c3 = self.c3(c2)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        lat3, lat4, lat5 = (lat(c) for lat, c in zip(self.laterals, (c3, c4, c5)))
        top4 = lat4 + F.interpolate(lat5, size=lat4.shape[-2:], mode="nearest")
        top3 = lat3 + F.interpolate(top4, size=lat3.shape[-2:], mode="nearest")
        p3, p4, p5 = (s(t) for s, t in zip(self.smooth, (top3, top4, lat5)))
        p6 = self.p6(p5)
        maps = [p3, p4, p5, p6, self.p7(p6)]
        if self.lateral2 is None or self.smooth2 is None:
            return maps
        lat2 = self.lateral2(c2)
        top2 = lat2 + F.interpolate(top3, size=lat2.shape[-2:], mode="nearest")
        return [self.smooth2(top2), *maps]
