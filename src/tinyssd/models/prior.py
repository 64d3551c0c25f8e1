"""Class-head initialisation for losses summed over every anchor (focal loss).

With zero biases every anchor starts at p = 1/K per class, and thousands of
background anchors swamp the first updates of a focal or summed CE loss
(RetinaNet, section 4.1). Starting the object classes at a small prior
probability makes the first steps learn objects rather than suppress noise.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn


def class_prior_bias(num_classes: int, prior: float = 0.01) -> Tensor:
    """Softmax biases giving each object class probability ``prior`` at zero input.

    Background gets ``log((1 - C prior) / prior)``, the C object classes 0,
    so ``softmax(bias) = (1 - C prior, prior, ..., prior)``.

    Returns:
        Tensor[C + 1]: background first.
    """
    if not 0 < prior * num_classes < 1:
        raise ValueError(f"prior {prior} x {num_classes} classes must be in (0, 1)")
    bias = torch.zeros(num_classes + 1)
    bias[0] = math.log((1 - num_classes * prior) / prior)
    return bias


@torch.no_grad()
def init_class_prior(cls_heads: nn.ModuleList, num_classes: int, prior: float = 0.01) -> None:
    """Set every class head's bias to ``class_prior_bias`` for each of its anchors.

    Args:
        cls_heads: convs with ``a * (C + 1)`` output channels (``SSD.cls_heads``).
    """
    bias = class_prior_bias(num_classes, prior)
    for head in cls_heads:
        # a Conv2d, or a SeparableHead giving its 1x1 conv's out_channels and bias
        out_channels, head_bias = cast(int, head.out_channels), cast(Tensor, head.bias)
        head_bias.copy_(bias.repeat(out_channels // (num_classes + 1)))
