"""A 3x3 convolution that stays correct on a one-pixel-wide map.

Small inputs shrink the coarsest maps to 1 pixel: tiny_fpn's S/64 map is
1x1 at 64 px, and its stride-2 conv to S/128 then reads a 1x1 map. On a CPU
in bf16 autocast (``--precision auto`` where the CPU has bf16), PyTorch 2.14's
dense stride-2 3x3 conv back-propagates garbage weight gradients (up to 1e36,
or NaN) when its input is 1 pixel wide; fp32 and depthwise convs are exact.
Training then stops with a non-finite weight a few steps in.

On such a map only the kernel's centre row / column ever meets a pixel (the
others read the zero padding), so the same output is a conv with the centre
slice of the kernel and no padding along that axis: exact, and not the
broken kernel. Weights, ``state_dict`` keys and results are those of
``nn.Conv2d``.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that, for a 3x3 kernel with padding 1, convolves a map of
    height or width 1 with the kernel's centre row / column instead.

    ``Tensor[B, C, H, W]`` -> ``Tensor[B, out_channels, H', W']``, as ``nn.Conv2d``.
    """

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        plain = self.padding == (1, 1) and self.dilation == (1, 1) and self.padding_mode == "zeros"
        if self.kernel_size != (3, 3) or not plain or (h > 1 and w > 1):
            return super().forward(x)
        rows = slice(1, 2) if h == 1 else slice(None)
        cols = slice(1, 2) if w == 1 else slice(None)
        padding = (0 if h == 1 else 1, 0 if w == 1 else 1)
        weight = self.weight[:, :, rows, cols]
        return F.conv2d(x, weight, self.bias, self.stride, padding, self.dilation, self.groups)
