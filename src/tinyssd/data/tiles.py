"""Training on tiles of large images (``tinyssd train --tile SIZE``), and ``--tile auto``.

    train = tile_split(train, tile=512, overlap=0.2, seed=0)   # one Record per kept tile

A tile's record names its image and its ``window``; its boxes are the image's
boxes clipped to the window, kept when at least half of a box lies inside
(:func:`tinyssd.tiling.boxes_in_window`), in the tile's pixels. The dataset
crops the window at native resolution after decoding (each image decoded once
with ``--cache ram``). Images no larger than 1.5 tiles stay whole. Tiles
without a box are sampled: at most one for every ten tiles with boxes.
"""

from __future__ import annotations

import logging
import math
import random
from statistics import median

from ..tiling import Tiling, tile_windows, visible_in_window
from .base import DataError, Record, Split, image_size
from .limits import DataLimits

log = logging.getLogger("tinyssd")

EMPTY_SHARE = 0.1  # tiles without boxes kept: at most this share of the tiles with boxes
MIN_VISIBLE = 0.5  # a box is a tile's when at least this share of its area lies inside
# --tile auto: tiling when the median image side is at least AUTO_SIDE input sides ...
AUTO_SIDE = 3.0
# ... and the median box side is under this share of the image side (small objects) ...
AUTO_BOX = 1 / 16
# ... with tiles from S to 2 S, the largest at which the median box keeps this many input pixels.
TARGET_BOX_PX = 16


def tile_split(
    split: Split,
    tile: int,
    overlap: float = 0.2,
    seed: int = 0,
    limits: DataLimits | None = None,
) -> Split:
    """``split`` with each image larger than 1.5 tiles replaced by its tiles' records.

    Image sizes come from the records, else from the image headers; an image
    whose header does not read stays whole (the dataset reports it). Empty tiles
    are sampled with ``seed`` (at most ``EMPTY_SHARE`` of the tiles with boxes).
    """
    tiling = Tiling(tile, overlap)
    records: list[Record] = []
    empty: list[int] = []  # indices in records of the tiles without a box
    for rec in split.records:
        try:
            size = rec.size or image_size(rec.image, limits)
        except DataError:
            records.append(rec)
            continue
        if not tiling.is_tiled(size):
            records.append(rec)
            continue
        for window in tile_windows(size, tile, overlap):
            tile_rec = _tile_record(rec, window.tolist())
            if not len(tile_rec.labels):
                empty.append(len(records))
            records.append(tile_rec)
    with_boxes = sum(1 for r in records if r.window is not None and len(r.labels))
    keep_empty = min(len(empty), math.ceil(EMPTY_SHARE * with_boxes))
    dropped = set(empty) - set(random.Random(seed).sample(empty, keep_empty))
    kept = [r for i, r in enumerate(records) if i not in dropped]
    tiled = sum(1 for r in kept if r.window is not None)
    log.info(
        "--tile %d (overlap %g): %d training images -> %d tiles with boxes + %d of %d empty "
        "(%d images whole)",
        tile,
        overlap,
        len(split.records),
        with_boxes,
        keep_empty,
        len(empty),
        len(kept) - tiled,
    )
    return Split(kept, split.classes, split.root)


def _tile_record(rec: Record, window: list[int]) -> Record:
    """The record of one tile: the boxes mostly inside it, in its pixels."""
    import torch

    clipped, keep = visible_in_window(rec.boxes, torch.tensor(window), MIN_VISIBLE)
    x0, y0, x1, y1 = window
    return rec.with_boxes(clipped, keep, size=(y1 - y0, x1 - x0), window=(x0, y0, x1, y1))


def choose_tile(
    image_sides: list[float], box_sides: list[float], input_size: int
) -> tuple[int, str]:
    """``--tile auto``'s choice from the training set: (tile side or 0 for none, the reason).

    Tiling pays when images are much larger than the input (median side >=
    ``AUTO_SIDE`` x S) and their objects small (median box side < ``AUTO_BOX`` of the
    image side), as shrinking whole would leave them a few pixels. The tile is
    the largest side from S to 2 S at which the median box still spans
    ``TARGET_BOX_PX`` input pixels (fewer tiles, more context).

    Args:
        image_sides: per training image, its longer side in pixels.
        box_sides: per box, sqrt(w h) in pixels.
        input_size: S.

    Example: 2,000-px images with 30-px boxes at S = 256: 2000 >= 768 and
    30 < 125, tile = clamp(256 * 30 / 16, 256, 512) = 480 (rounded to 32).
    """
    if not image_sides or not box_sides:
        return 0, "no training boxes"
    side, box = median(image_sides), median(box_sides)
    facts = (
        f"median image side {side:.0f} px, median box side {box:.0f} px "
        f"({box / side:.1%} of the side), input {input_size} px"
    )
    if side < AUTO_SIDE * input_size or box >= AUTO_BOX * side:
        return 0, f"{facts}: no tiling (it needs sides >= {AUTO_SIDE:g} x input, boxes < 1/16)"
    scale = min(max(box / TARGET_BOX_PX, 1.0), 2.0)
    tile = max(32, round(input_size * scale / 32) * 32)
    return tile, f"{facts}: tiles of {tile} px"


def auto_tile(
    root: str, format: str, input_size: int, limits: DataLimits | None = None
) -> tuple[int, str]:
    """:func:`choose_tile` for the training split of the data set at ``root``."""
    from .sizes import sized_training_records

    image_sides, box_sides = [], []
    for size, rec in sized_training_records(root, format, limits):
        image_sides.append(float(max(size)))
        wh = (rec.boxes[:, 2:] - rec.boxes[:, :2]).clamp(min=0)
        box_sides += wh.prod(dim=1).sqrt().tolist()
    return choose_tile(image_sides, box_sides, input_size)
