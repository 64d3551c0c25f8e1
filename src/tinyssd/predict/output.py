"""A prediction written out: the JSON line of one image and its drawn picture.

The one writer behind ``tinyssd predict`` (images and videos) and ``tinyssd serve``:

    line = {"image": name, **detection_line(d, width, height), "picture": str(path)}
    write_picture(image, d, det.classes, path)          # PNG, written atomically
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image
from torch import Tensor

from ..files import atomic_path
from ..viz import draw_detections


def detection_line(detections: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """The JSON fields of one image's detections, as ``tinyssd predict`` prints them:
    ``width``, ``height``, ``boxes`` (xyxy pixels, 0.01 px), ``scores`` (1e-4), ``labels``,
    ``names``."""
    return {
        "width": width,
        "height": height,
        "boxes": [[round(v, 2) for v in b] for b in detections["boxes"].tolist()],
        "scores": [round(s, 4) for s in detections["scores"].tolist()],
        "labels": detections["labels"].tolist(),
        "names": detections["names"],
    }


def drawn(image: Tensor, detections: dict[str, Any], classes: Sequence[str]) -> Image.Image:
    """``image`` (Tensor[3, H, W] uint8) with its detections' boxes, names and scores."""
    d = detections
    return draw_detections(image, d["boxes"], d["scores"], d["labels"], classes)


def write_picture(
    image: Tensor, detections: dict[str, Any], classes: Sequence[str], path: str | Path
) -> Path:
    """Draw the detections on ``image`` into ``path`` (PNG; folders made), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        drawn(image, detections, classes).save(tmp, format="PNG")
    return path
