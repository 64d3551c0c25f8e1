"""The chapter's TinySSD backbone: base net 3->16->32->64, three 128 blocks, global max pool."""

from __future__ import annotations

from torch import Tensor, nn


def down_sample_blk(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two (3x3 conv, BN, ReLU) then 2x2 max pool: halves h and w."""
    blk: list[nn.Module] = []
    for _ in range(2):
        blk += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        in_channels = out_channels
    blk.append(nn.MaxPool2d(2))
    return nn.Sequential(*blk)


def base_net() -> nn.Sequential:
    num_filters = [3, 16, 32, 64]
    return nn.Sequential(*[down_sample_blk(num_filters[i], num_filters[i + 1]) for i in range(3)])


class TinyBackbone(nn.Module):
    """Five feature maps; attribute names ``blk_0..blk_4`` as in the chapter."""

    def __init__(self) -> None:
        super().__init__()
        self.blk_0 = base_net()
        self.blk_1 = down_sample_blk(64, 128)
        self.blk_2 = down_sample_blk(128, 128)
        self.blk_3 = down_sample_blk(128, 128)
        self.blk_4 = nn.AdaptiveMaxPool2d((1, 1))

    def forward(self, x: Tensor) -> list[Tensor]:
        """``Tensor[B, 3, S, S]`` -> maps of S/8, S/16, S/32, S/64 and 1."""
        feats = []
        for blk in (self.blk_0, self.blk_1, self.blk_2, self.blk_3, self.blk_4):
            x = blk(x)
            feats.append(x)
        return feats
