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

A model trained on tiles (``tinyssd train --tile SIZE``) predicts by tiles and the
whole image, merged (:func:`predict_tiled`, the one path of every predictor):

    tiling = Tiling(512, 0.2)
    dets = predict_tiled(detect, images, 256, tiling, nms_threshold=0.45, max_detections=100)

Boxes are xyxy in pixels throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Tiling",
    "boxes_in_window",
    "crop_windows",
    "merge_detections",
    "predict_tiled",
    "tile_starts",
    "tile_windows",
    "visible_in_window",
]

# An image at most this many tiles wide and high is predicted whole (tiles would add little).
WHOLE_FACTOR = 1.5

# (images uint8 Tensor[B, 3, S, S], each item's (height, width)) -> per item ``boxes``
# (xyxy in that item's pixels), ``scores``, ``labels``: a predictor's network + selection.
Detect = Callable[[Tensor, list[tuple[int, int]]], list[dict[str, Tensor]]]


@dataclass(frozen=True)
class Tiling:
    """How a model trained on tiles sees a large image (stored with the model).

    Attributes:
        tile: tile side in the image's own pixels (each tile is resized to the input S).
        overlap: share of ``tile`` that neighbouring tiles have in common.
    """

    tile: int
    overlap: float = 0.2

    @staticmethod
    def from_config(train: dict[str, Any]) -> Tiling | None:
        """From a run's ``config.json`` ``"train"`` dict (or an ONNX graph's metadata):
        None when it was not trained on tiles (``tile`` 0 or absent)."""
        tile = int(train.get("tile") or 0)
        return Tiling(tile, float(train.get("tile_overlap", 0.2))) if tile > 0 else None

    def is_tiled(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` (height, width) is cut: larger than 1.5 tiles."""
        return max(size) > WHOLE_FACTOR * self.tile


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


def crop_windows(size: tuple[int, int], tiling: Tiling | None) -> Tensor:
    """What is predicted of an image of ``size`` (height, width): the whole image, after
    its tiles when ``tiling`` cuts it (:meth:`Tiling.is_tiled`).

    Returns:
        Tensor[T, 4] int64: windows xyxy in the image's pixels, the whole image last.
    """
    height, width = size
    whole = torch.tensor([[0, 0, width, height]], dtype=torch.int64)
    if tiling is None or not tiling.is_tiled(size):
        return whole
    return torch.cat((tile_windows(size, tiling.tile, tiling.overlap), whole))


def visible_in_window(
    boxes: Tensor, window: Tensor, min_visible: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Boxes clipped to a window, in the window's pixels, and which of them it keeps: those
    with at least ``min_visible`` of their area inside.

    Args:
        boxes (Tensor[M, 4]): xyxy in the image's pixels.
        window (Tensor[4]): the tile, xyxy in the image's pixels.
    Returns:
        (Tensor[M, 4] xyxy in the window's pixels, Tensor[M] bool keep).
    """
    win = window.to(boxes.dtype)
    clipped = torch.cat(
        (torch.maximum(boxes[:, :2], win[:2]), torch.minimum(boxes[:, 2:], win[2:])), 1
    )
    visible = (clipped[:, 2:] - clipped[:, :2]).clamp(min=0).prod(dim=1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(dim=1)
    keep = (visible > 0) & (visible >= min_visible * area)
    return clipped - win[:2].repeat(2), keep


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
    clipped, keep = visible_in_window(boxes, window, min_visible)
    return clipped[keep], labels[keep]


def merge_detections(
    detections: list[dict[str, Tensor]],
    windows: Tensor,
    nms_threshold: float,
    max_detections: int,
    class_agnostic: bool = False,
) -> dict[str, Tensor]:
    """One image's detections from its tiles' (and the whole image's): each tile's boxes
    moved by its window's corner, then per-class (or ``class_agnostic``) NMS over all of
    them, best first.

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
            d["boxes"] + w[:2].to(d["boxes"]).repeat(2)  # the boxes' dtype and device
            for d, w in zip(detections, windows, strict=True)
        ]
    )
    scores = torch.cat([d["scores"] for d in detections])
    labels = torch.cat([d["labels"] for d in detections])
    groups = torch.zeros_like(labels) if class_agnostic else labels
    keep = batched_nms(boxes.float(), scores.float(), groups, nms_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def _crops(
    images: Sequence[Tensor], image_size: int, tiling: Tiling | None
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(image index, window, crop resized to S x S) of every window of every image."""
    from .images import resize_image

    for i, image in enumerate(images):
        size = (int(image.shape[-2]), int(image.shape[-1]))
        for window in crop_windows(size, tiling):
            x0, y0, x1, y1 = window.tolist()
            yield i, window, resize_image(image[:, y0:y1, x0:x1], image_size)


def predict_tiled(
    detect: Detect,
    images: Sequence[Tensor],
    image_size: int,
    tiling: Tiling | None,
    nms_threshold: float,
    max_detections: int,
    batch_size: int = 32,
    class_agnostic: bool = False,
) -> list[dict[str, Tensor]]:
    """Detections of whole images, each predicted by its tiles and whole (SAHI's way) when
    ``tiling`` cuts it, else whole as by ``detect`` alone.

    Every window (:func:`crop_windows`) is resized to S x S and run through ``detect``
    in batches of at most ``batch_size``; a cut image's detections are moved to its
    pixels and merged (:func:`merge_detections`, ``nms_threshold``, ``max_detections``,
    ``class_agnostic``: a ``PostprocessConfig``'s).

    Args:
        detect: the network and selection of a predictor (:data:`Detect`).
        images: ``Tensor[3, H, W]`` uint8 each, any sizes.
    Returns:
        per image ``boxes`` Tensor[N, 4] xyxy in its pixels, ``scores``, ``labels``.
    """
    per_image: list[list[tuple[Tensor, dict[str, Tensor]]]] = [[] for _ in images]
    pending: list[tuple[int, Tensor, Tensor]] = []

    def flush() -> None:
        sizes = [(int(w[3] - w[1]), int(w[2] - w[0])) for _, w, _ in pending]
        dets = detect(torch.stack([crop for _, _, crop in pending]), sizes)
        for (i, window, _), d in zip(pending, dets, strict=True):
            per_image[i].append((window, d))
        pending.clear()

    for crop in _crops(images, image_size, tiling):
        pending.append(crop)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    out = []
    for parts in per_image:
        if len(parts) == 1:  # predicted whole: as without tiling
            out.append(parts[0][1])
            continue
        windows = torch.stack([w for w, _ in parts])
        dets = [{k: d[k] for k in ("boxes", "scores", "labels")} for _, d in parts]
        out.append(merge_detections(dets, windows, nms_threshold, max_detections, class_agnostic))
    return out
