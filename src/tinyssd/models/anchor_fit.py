"""Anchors fitted to a data set (``--anchors auto``), as YOLO's AutoAnchor does for YOLO.

A preset's anchor sizes are fractions of the image chosen for some other data;
on blood cells or on bananas most boxes may fall between them. Fitting keeps
the preset's layout (maps, sizes per map, ratios per cell: the same tensors)
and replaces the sizes by quantiles of the training boxes' sizes, so every
size serves an equal share of the boxes, and the ratios by quantiles of their
aspect ratios.

    fit = fit_for_data(tiny_fpn(), boxes)   # what training and `data check --model` use
    fit.config, fit.before, fit.after, fit.kept_preset

:func:`fit_for_data` is ``--anchors auto``: a seeded sample of the boxes, the
fit, and the preset's anchors kept where they match more boxes (as YOLO's
AutoAnchor keeps its defaults when they fit well enough).
"""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from ..anchors import AnchorGenerator, anchor_miss_rate, fit_anchor_ratios, fit_anchor_sizes
from .config import SSDConfig

# Training boxes the anchor fit looks at, at most: a seeded sample of a larger set.
FIT_BOXES = 4000
MIN_FIT_BOXES = 2  # with fewer, the preset's anchors are kept as they are


class AnchorFit(NamedTuple):
    """What ``--anchors auto`` chose, and why.

    Attributes:
        config: the config to train with: fitted anchors, or the preset's where
            they match more boxes (or there are fewer than MIN_FIT_BOXES boxes).
        boxes: boxes looked at (a seeded sample of at most FIT_BOXES).
        before: share of them no preset anchor matches at IoU 0.5.
        after: the same share for the fitted anchors (``before`` when not fitted).
        kept_preset: ``config`` has the preset's anchors.
    """

    config: SSDConfig
    boxes: int
    before: float
    after: float
    kept_preset: bool


def fit_for_data(config: SSDConfig, boxes: Tensor, seed: int = 0) -> AnchorFit:
    """``--anchors auto``: ``config``'s anchors fitted to training ``boxes``, unless the
    preset's match more of them.

    Args:
        boxes (Tensor[N, 4]): normalised xyxy training boxes; more than FIT_BOXES are
            sampled (seeded by ``seed``): quantiles need no more, memory stays flat.
    """
    if len(boxes) > FIT_BOXES:
        pick = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(seed))
        boxes = boxes[pick[:FIT_BOXES]]
    before = miss_rate(config, boxes)
    if len(boxes) < MIN_FIT_BOXES:
        return AnchorFit(config, len(boxes), before, before, True)
    fitted = fit_anchors(config, boxes[:, 2:] - boxes[:, :2])
    after = miss_rate(fitted, boxes)
    if after <= before:
        return AnchorFit(fitted, len(boxes), before, after, False)
    return AnchorFit(config, len(boxes), before, after, True)


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
    generator = AnchorGenerator(
        config.sizes, config.ratios, config.anchor_steps, config.clip_anchors
    )
    anchors = generator(shapes, "cpu")
    return anchor_miss_rate(anchors, boxes)
