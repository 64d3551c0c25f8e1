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
import math
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from torch import Tensor

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
FLOAT32_MAX = 3.4028234663852886e38  # larger coordinates would become inf in the float32 boxes
# What PIL raises for files it cannot decode; a decompression bomb is not an OSError.
UNREADABLE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    DecompressionBombError,
)


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

    def with_classes(self, classes: list[str]) -> Split:
        """The same split labelled by ``classes`` (another split's list), matched by name.

        Used to read val with train's labels: ``Split(recs, ["dog"])`` relabelled to
        ``["cat", "dog"]`` turns label 1 into 2. Where some names are not in ``classes``
        (the banana layout names classes by count when it has no ``classes.txt``),
        labels keep their numbers if they fit; otherwise it is an error.
        """
        if self.classes == list(classes):
            return self
        if set(self.classes) <= set(classes):
            new_label = torch.tensor([0] + [classes.index(n) + 1 for n in self.classes])
            records = [
                Record(r.image, r.boxes, new_label[r.labels], r.difficult, r.iscrowd, r.size)
                for r in self.records
            ]
            return Split(records, list(classes), self.root)
        if len(self.classes) <= len(classes):
            log.warning("%s: class names %s differ from %s", self.root, self.classes, classes)
            return Split(self.records, list(classes), self.root)
        raise DataError(
            f"{self.root}: classes {self.classes} do not match the training classes {classes}"
        )


# Problem kinds reported by readers and by `tinyssd data check`.
UNREADABLE_IMAGE = "unreadable image"
BAD_BOX = "box with x1 >= x2 or y1 >= y2 (dropped)"
OUTSIDE_BOX = "box outside the image (clipped)"
UNKNOWN_CLASS = "unknown class (box dropped)"
NO_LABELS = "image without labels (kept as negative)"
MISSING_IMAGE = "label without image (skipped)"
BAD_LABEL_FILE = "unparsable label file (skipped)"
BAD_SPLIT = "unreadable split (skipped)"


@dataclass
class Report:
    """Problems found while reading a data set, grouped by kind."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str | Path, detail: str = "") -> None:
        """Record one problem; control characters (a newline in a file name) are escaped."""
        entry = f"{where}: {detail}" if detail else str(where)
        self.items[kind].append("".join(c if c.isprintable() else repr(c)[1:-1] for c in entry))

    def add_unreadable(self, image: str | Path, error: DataError) -> None:
        """Record an image that ``read_image`` or ``image_size`` could not read."""
        self.add(UNREADABLE_IMAGE, image, str(error).split(": ", 1)[-1])

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
    except UNREADABLE_ERRORS as e:
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
    except UNREADABLE_ERRORS as e:
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


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (a BOM is dropped); one-line :class:`DataError` otherwise."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None


def read_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line, blank lines skipped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def finite_float(value: str | float) -> float:
    """A coordinate from text or a JSON number.

    Raises:
        ValueError: not a number (booleans included), or not finite as float32.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def tidy_number(value: float) -> int | float:
    """``12.0 -> 12``, ``12.300000190734863 -> 12.3``: what label files should hold."""
    value = round(float(value), 4)
    return int(value) if value.is_integer() else value


def natural_key(name: str) -> tuple:
    """Sort key putting ``2.png`` before ``10.png``; other names after, alphabetically."""
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def free_stem(stem: str, prefix: str, taken: set[str]) -> str:
    """``stem`` if not in ``taken``, else ``{prefix}_{stem}`` (``_2``, ``_3``... if needed).

    The result is added to ``taken``. Writers use it so that images of several
    splits, or from several source folders, never overwrite one another.
    """
    name = stem if stem not in taken else f"{prefix}_{stem}"
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def is_file(path: str | Path) -> bool:
    """Whether ``path`` is a file; False (not an OSError) for a name the OS rejects.

    For paths built from what label files say: ``Path.is_file`` raises on a
    name too long for the file system.
    """
    return os.path.isfile(path)


def exists(path: str | Path) -> bool:
    """Whether ``path`` exists; False (not an OSError) for a name the OS rejects."""
    return os.path.exists(path)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` where the file system allows it, else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
