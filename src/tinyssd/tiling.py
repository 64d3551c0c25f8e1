"""Tiles for large images (as SAHI does, built in): cut at native resolution, boxes mapped
to each tile, detections of the tiles mapped back and merged.

A 2,000-px aerial photo shrunk whole to a 256-px input turns 25-px trees into
3-px ones no anchor can learn. Cut into 256-px tiles instead, every object keeps
its size in pixels; the tiles overlap so that an object cut by one tile's edge
lies whole in its neighbour, and the duplicates found twice at the borders are
merged by NMS.

    windows = tile_windows((2000, 3000), tile=512, overlap=0.2)   # Tensor[N, 4] xyxy px
    boxes, labels = boxes_in_window(gt_boxes, gt_labels, windows[0])  # tile pixels
    ... detect in each tile ...
    merged = merge_detections(per_tile, windows, nms_threshold=0.45)

Boxes are xyxy in pixels throughout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["boxes_in_window", "merge_detections", "tile_starts", "tile_windows"]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` with at least
    ``overlap`` (a fraction of ``tile``) between neighbours; the last tile ends at
    ``length``. One tile at 0 when ``length <= tile``.

    Example: ``tile_starts(1000, 400, 0.2)`` -> ``[0, 300, 600]`` (stride at most 320,
    3 tiles; evenly spread: 0, 300, 600, the last ending at 1000).
    """
    if length <= tile:
        return [0]
    max_stride = tile * (1 - overlap)
    count = math.ceil((length - tile) / max_stride) + 1
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def tile_windows(size: tuple[int, int], tile: int, overlap: float = 0.2) -> Tensor:
    """The tiles of an image of ``size`` (height, width), row-major.

    Returns:
        Tensor[N, 4] int64: windows xyxy in the image's pixels; each is ``tile`` wide and
        high, or the whole side where the image is smaller.
    """
    if tile <= 0 or not 0 <= overlap < 1:
        raise ValueError(f"tile {tile}, overlap {overlap}: need tile > 0 and 0 <= overlap < 1")
    height, width = size
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    return torch.tensor(
        [[x, y, min(x + tile, width), min(y + tile, height)] for y in ys for x in xs],
        dtype=torch.int64,
    )


def boxes_in_window(
    boxes: Tensor, labels: Tensor, window: Tensor, min_visible: float = 0.5
) -> tuple[Tensor, Tensor]:
    """The boxes a tile trains on: clipped to the window, kept when at least
    ``min_visible`` of the box's area lies inside it, in the tile's pixels.

    Args:
        boxes (Tensor[M, 4]): xyxy in the image's pixels; labels (Tensor[M]).
        window (Tensor[4]): the tile, xyxy in the image's pixels.
    Returns:
        (Tensor[K, 4] xyxy in the tile's pixels, Tensor[K] labels), K <= M.
    """
    win = window.to(boxes.dtype)
    clipped = torch.cat(
        (torch.maximum(boxes[:, :2], win[:2]), torch.minimum(boxes[:, 2:], win[2:])), 1
    )
    visible = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    keep = (visible > 0) & (visible >= min_visible * area)
    return clipped[keep] - win[:2].repeat(2), labels[keep]


def merge_detections(
    detections: list[dict[str, Tensor]],
    windows: Tensor,
    nms_threshold: float,
    max_detections: int,
) -> dict[str, Tensor]:
    """One image's detections from its tiles' (and the whole image's): each tile's boxes
    moved by its window's corner, then per-class NMS over all of them, best first.

    Args:
        detections: per tile ``boxes`` (Tensor[N_i, 4] xyxy in that tile's pixels),
            ``scores`` (Tensor[N_i]), ``labels`` (Tensor[N_i]).
        windows (Tensor[T, 4]): each tile's window in the image's pixels (the whole
            image's pass: its full window).
    Returns:
        ``boxes`` Tensor[N, 4] in the image's pixels, ``scores``, ``labels``, N <= max_detections.
    """
    from torchvision.ops import batched_nms

    boxes = torch.cat(
        [
            d["boxes"] + w[:2].to(d["boxes"].dtype).repeat(2)
            for d, w in zip(detections, windows, strict=True)
        ]
    )
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    keep = batched_nms(boxes.float(), scores.float(), labels, nms_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
