"""``tinyssd train --image-size auto``: the input size chosen from the training boxes.

    size, reason = auto_image_size("data/bccd", "auto", default=256, stride=8)

Images are resized whole to S x S, so a box of w x h pixels in a W x H image
covers w S / W x h S / H input pixels. The rule takes the smallest S (the
model's own size, or a multiple of 32 above it, up to twice its pixels) at
which the training set's small boxes (the 10th percentile of the shorter
side) span at least two cells of the model's finest feature map. Nothing is
decoded: box sizes come from the records, image sizes from them or from the
image headers.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .base import DataError, Record, image_size
from .limits import DataLimits

log = logging.getLogger("tinyssd")

if TYPE_CHECKING:
    from ..models.config import SSDConfig

SMALL_QUANTILE = 0.1  # "small objects": this quantile of the boxes' shorter sides ...
MIN_CELLS = 2  # ... must span this many cells of the finest feature map
SIZE_STEP = 32  # sizes above the model's are multiples of this
MAX_PIXELS_FACTOR = 2.0  # up to this many times the model's input pixels (256 -> 352)


def size_cap(default: int) -> int:
    """The largest ``--image-size auto`` for a model of input side ``default``: the largest
    multiple of ``SIZE_STEP`` whose square has at most ``MAX_PIXELS_FACTOR`` x the pixels
    (256 -> 352, 300 -> 416, 320 -> 448), never below ``default``."""
    side = math.isqrt(int(MAX_PIXELS_FACTOR * default * default))
    return max(default, side // SIZE_STEP * SIZE_STEP)


def choose_image_size(
    box_sides: Tensor, image_sides: Tensor, default: int, stride: int
) -> tuple[int, str]:
    """``--image-size auto``'s choice: (the input side S, the reason in words).

    ``small`` is the ``SMALL_QUANTILE`` quantile of min(w / W, h / H) over the
    boxes: the shorter side of a small box as a share of the input, whatever S.
    S is the first of ``default``, then the multiples of ``SIZE_STEP`` above it up
    to :func:`size_cap`, with small x S >= ``MIN_CELLS`` x ``stride``; the cap when
    none reaches it. Never below ``default``.

    Args:
        box_sides (Tensor[N, 2]): each training box's (w, h), pixels of its image.
        image_sides (Tensor[N, 2]): the (W, H) of the image each box is in, pixels.
        default: the model's own input side, pixels.
        stride: input pixels per cell of the model's finest feature map (tiny_fpn: 8).

    Example: small = 0.055 (a 14-px side at 256; 26 px of a 480-px image), stride 8:
    14 < 16 at 256 and 288 (15.8 px), 17.6 >= 16 at 320: S = 320. With small = 0.03
    (7.7 px at 256) 16 px would need S = 533: the cap, 352. With small = 0.15: 256.
    """
    shares = (box_sides / image_sides).min(dim=1).values.double()
    if not len(shares):
        return default, "no training boxes: the model's size"
    small = torch.quantile(shares, SMALL_QUANTILE).item()
    need = MIN_CELLS * stride
    facts = (
        f"{SMALL_QUANTILE:.0%} of the training boxes are under {small * default:.1f} px "
        f"at {default}; the finest map's cells are {stride} px"
    )
    cap = size_cap(default)
    first_step = (default // SIZE_STEP + 1) * SIZE_STEP
    for size in (default, *range(first_step, cap + 1, SIZE_STEP)):
        if small * size >= need - 1e-9:
            cells = small * size / stride
            if size == default:
                return size, f"{facts}: they span {cells:.1f} cells already"
            return size, f"{facts}: at {size} they span {cells:.1f}"
    wanted = need / small if small > 0 else math.inf  # readers drop empty boxes
    return cap, (
        f"{facts}: {MIN_CELLS} cells need {wanted:.0f}, above the cap of {cap} "
        f"({MAX_PIXELS_FACTOR:g}x the model's pixels)"
    )


def auto_image_size(
    root: str, format: str, default: int, stride: int, limits: DataLimits | None = None
) -> tuple[int, str]:
    """:func:`choose_image_size` for the training split of the data set at ``root``.

    Difficult (VOC) and crowd (COCO) boxes are left out, as evaluation leaves them
    out.
    """
    box_sides, image_sides = [], []
    for (height, width), rec in sized_training_records(root, format, limits):
        counted = ~(rec.difficult | rec.iscrowd)
        wh = (rec.boxes[counted, 2:] - rec.boxes[counted, :2]).clamp(min=0)
        box_sides.append(wh)
        image_sides.append(torch.tensor([[float(width), float(height)]]).expand(len(wh), 2))
    if not box_sides:
        return choose_image_size(torch.zeros(0, 2), torch.ones(0, 2), default, stride)
    return choose_image_size(torch.cat(box_sides), torch.cat(image_sides), default, stride)


def sized_training_records(
    root: str, format: str, limits: DataLimits | None = None
) -> list[tuple[tuple[int, int], Record]]:
    """The training split's records with each image's (height, width), from its record or
    its header (nothing decoded): what ``--image-size auto`` and ``--tile auto`` decide
    from. An image whose size neither gives is left out, counted in one log line."""
    from . import load_split

    split = load_split(root, "train", format, None, limits)
    sized, unsized = [], 0
    for rec in split.records:
        try:
            sized.append((rec.size or image_size(rec.image, limits), rec))
        except DataError:
            unsized += 1
    if unsized:
        log.info("%d training image(s) left out: no readable size in the header", unsized)
    return sized


def finest_stride(config: SSDConfig) -> int:
    """Input pixels per cell of ``config``'s finest feature map, at its own input size:
    a dry run of the backbone on the meta device (no weights, no arithmetic).
    tiny_fpn: 256 / 32 = 8; ssd300_vgg16: 300 / 38 -> 8; ssdlite320: 320 / 20 = 16."""
    from ..models.anchor_fit import feature_shapes

    with torch.device("meta"):
        shapes = feature_shapes(config, config.image_size)
    return round(config.image_size / max(max(shape) for shape in shapes))
