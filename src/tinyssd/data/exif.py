"""Boxes annotated on the stored pixels of an image that EXIF says to turn.

``read_image`` shows an image the way its EXIF orientation says (a phone
photo stored 4000 x 3000 with orientation 6 is shown 3000 x 4000). Most tools
annotate what they show, but some annotate the stored pixels: their VOC
``<size>`` or COCO ``width``/``height`` is then the stored size, not the
shown one. :func:`to_display_frame` finds those (the annotation's size is the
stored one and differs from the shown one), reports them and turns the boxes
the way the image is turned, so boxes and pixels stay together.

Orientations 2-4 (mirror, 180°) keep the size, so they cannot be told apart:
such annotations are taken as made on the shown image.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .base import EXIF_FRAME, DataError, Record, Report, image_header
from .limits import DataLimits


def exif_boxes(boxes: Tensor, orientation: int, width: int, height: int) -> Tensor:
    """Boxes on the stored image moved to where ``ImageOps.exif_transpose`` puts their pixels.

    Args:
        boxes (Tensor[M, 4]): xyxy pixels of the stored image, ``width`` x ``height``.
        orientation: EXIF orientation 1..8.
    Returns:
        Tensor[M, 4]: xyxy pixels of the shown image (``height`` x ``width``
        wide for orientations 5-8).
    Example:
        orientation 6 (turn 90° clockwise) of a 6 x 4 image moves its left
        column ``[0, 0, 1, 4]`` to the top row ``[0, 0, 4, 1]``.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = float(width), float(height)
    moved = {
        1: (x1, y1, x2, y2),
        2: (w - x2, y1, w - x1, y2),  # mirror left-right
        3: (w - x2, h - y2, w - x1, h - y1),  # 180°
        4: (x1, h - y2, x2, h - y1),  # mirror top-bottom
        5: (y1, x1, y2, x2),  # transpose
        6: (h - y2, x1, h - y1, x2),  # 90° clockwise
        7: (h - y2, w - x2, h - y1, w - x1),  # transverse
        8: (y1, w - x2, y2, w - x1),  # 90° counter-clockwise
    }[orientation]
    return torch.stack(moved, dim=-1)


def to_display_frame(record: Record, report: Report, limits: DataLimits | None = None) -> Record:
    """``record`` with its boxes turned if they were annotated before the EXIF rotation.

    That is the case when the annotation's size is the stored (height, width),
    EXIF orientation is 5-8 and the image is not square; it is reported.
    Records without a size, and images whose header cannot be read (reported
    when decoded), are returned as they are.
    """
    if record.size is None or record.size[0] == record.size[1]:
        return record
    try:
        h, w, orientation = image_header(record.image, limits)
    except DataError:
        return record
    if orientation < 5 or record.size != (h, w):
        return record
    report.add(
        EXIF_FRAME,
        record.image,
        f"annotated as {w}x{h}, shown {h}x{w} (EXIF orientation {orientation})",
    )
    boxes = exif_boxes(record.boxes, orientation, w, h)
    return dataclasses.replace(record, boxes=boxes, size=(w, h))
