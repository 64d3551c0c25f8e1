"""What every data format reads into: records, splits, problem reports, image decoding.

A reader (bananas, VOC, COCO, YOLO) is a function ``read_*(root, split, report)
-> Split``. It never decodes images; it returns one :class:`Record` per usable
image, with boxes in the pixel coordinates of the image as stored (xyxy,
0-based, x2/y2 exclusive as in the d2l banana CSV) and labels ``1..C``
(0 is background). What it cannot use it records in the :class:`Report` and
skips; what makes the whole split unusable raises :class:`DataError` with a
one-line message that names the file.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad input data. The message is one line: ``path[:line]: what is wrong``."""


@dataclass(frozen=True)
class Record:
    """One image and its annotations, as read from the label files.

    Attributes:
        image: path of the image file.
        boxes (Tensor[M, 4] float32): xyxy in the stored image's pixels.
        labels (Tensor[M] int64): class ids 1..C (0 is background).
        difficult (Tensor[M] bool): VOC "difficult" (ignored by VOC evaluation).
        iscrowd (Tensor[M] bool): COCO crowd regions (ignored by COCO evaluation).
        size: (height, width) if the annotation says it, else None.
    """

    image: Path
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    iscrowd: Tensor
    size: tuple[int, int] | None = None

    @staticmethod
    def make(
        image: Path,
        boxes: list | np.ndarray | Tensor,
        labels: list | np.ndarray | Tensor,
        difficult=None,
        iscrowd=None,
        size: tuple[int, int] | None = None,
    ) -> Record:
        """Build a record from plain lists, filling the optional flags with False."""
        boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
        m = len(labels_t)
        flags = [
            torch.zeros(m, dtype=torch.bool)
            if f is None
            else torch.as_tensor(np.asarray(f, dtype=bool).reshape(-1))
            for f in (difficult, iscrowd)
        ]
        return Record(Path(image), boxes_t, labels_t, flags[0], flags[1], size)


@dataclass
class Split:
    """A readable split: its records and its class names (``classes[i]`` is label ``i+1``)."""

    records: list[Record]
    classes: list[str]
    root: Path


# Problem kinds reported by readers and by `tinyssd data check`.
UNREADABLE_IMAGE = "unreadable image"
BAD_BOX = "box with x1 >= x2 or y1 >= y2 (dropped)"
OUTSIDE_BOX = "box outside the image (clipped)"
UNKNOWN_CLASS = "unknown class (box dropped)"
NO_LABELS = "image without labels (kept as negative)"
MISSING_IMAGE = "label without image (skipped)"
BAD_LABEL_FILE = "unparsable label file (skipped)"


@dataclass
class Report:
    """Problems found while reading a data set, grouped by kind."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str | Path, detail: str = "") -> None:
        self.items[kind].append(f"{where}: {detail}" if detail else str(where))

    def count(self, kind: str) -> int:
        return len(self.items.get(kind, []))

    def __bool__(self) -> bool:
        return any(self.items.values())

    def summary(self, first: int = 3) -> str:
        """Multi-line text: per kind its count and the first few places."""
        if not self:
            return "no problems found"
        lines = []
        for kind, where in self.items.items():
            if not where:
                continue
            lines.append(f"{len(where):6d}  {kind}")
            lines += [f"        {w}" for w in where[:first]]
            if len(where) > first:
                lines.append(f"        ... and {len(where) - first} more")
        return "\n".join(lines)


def read_image(path: str | Path) -> Tensor:
    """Decode an image file to RGB, EXIF orientation applied.

    Any mode (grey, RGBA, palette, 16-bit) is converted to 8-bit RGB.

    Returns:
        Tensor[3, H, W] uint8.
    Raises:
        DataError: the file is missing, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                top = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8))
            im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image after EXIF orientation, reading only its header."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def clip_to_image(record: Record, size: tuple[int, int], report: Report) -> Record:
    """Clip boxes to the image (reported), dropping those left empty (reported).

    Args:
        size: (height, width) of the decoded image.
    """
    h, w = size
    b = record.boxes
    clipped = b.clone()
    clipped[:, 0::2] = clipped[:, 0::2].clamp(0, w)
    clipped[:, 1::2] = clipped[:, 1::2].clamp(0, h)
    moved = (clipped != b).any(dim=1)
    for i in moved.nonzero().flatten().tolist():
        report.add(OUTSIDE_BOX, record.image, f"{b[i].tolist()} in {w}x{h}")
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    for i in (~keep).nonzero().flatten().tolist():
        report.add(BAD_BOX, record.image, f"{b[i].tolist()} is empty inside {w}x{h}")
    return Record(
        record.image,
        clipped[keep],
        record.labels[keep],
        record.difficult[keep],
        record.iscrowd[keep],
        (h, w),
    )
