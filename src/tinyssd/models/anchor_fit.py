"""Anchors fitted to a data set (``--anchors auto``), as YOLO's AutoAnchor does for YOLO.

A preset's anchor sizes are fractions of the image chosen for some other data;
on blood cells or on bananas most boxes may fall between them. Fitting keeps
the preset's layout (maps, sizes per map, ratios per cell: the same tensors)
and replaces the sizes by quantiles of the training boxes' sizes, so every
size serves an equal share of the boxes, and the ratios by quantiles of their
aspect ratios.

    config = fit_anchors(tiny_fpn(), box_wh)          # an SSDConfig
    before, after = miss_rate(tiny_fpn(), boxes), miss_rate(config, boxes)
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..anchors import AnchorGenerator, anchor_miss_rate, fit_anchor_ratios, fit_anchor_sizes
from .config import SSDConfig


def fit_anchors(config: SSDConfig, wh: Tensor) -> SSDConfig:
    """``config`` with anchor sizes and ratios fitted to boxes of widths and heights ``wh``.

    Args:
        wh (Tensor[N, 2]): training boxes' widths and heights, normalised to the image.
    Returns:
        The same layout (anchors per cell unchanged), the fitted sizes and ratios.
    """
    sizes = fit_anchor_sizes(wh, len(config.sizes), len(config.sizes[0]))
    ratios = fit_anchor_ratios(wh, len(config.ratios[0]))
    return replace(config, sizes=sizes, ratios=(ratios,) * len(config.ratios))


def feature_shapes(config: SSDConfig, image_size: int) -> list[tuple[int, int]]:
    """The (h, w) of each feature map the heads read, for a square input (one dry run)."""
    from .ssd import SSD

    model = SSD(1, replace(config, image_size=image_size)).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, image_size, image_size))
    return [tuple(f.shape[-2:]) for f in feats]


def miss_rate(config: SSDConfig, boxes: Tensor, image_size: int | None = None) -> float:
    """Share of ``boxes`` (Tensor[N, 4] normalised xyxy) whose best anchor IoU is < 0.5."""
    shapes = feature_shapes(config, image_size or config.image_size)
    anchors = AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")
    return anchor_miss_rate(anchors, boxes)
