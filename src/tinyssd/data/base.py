"""What every data format reads into: records, splits, problem reports, image decoding.

A reader (bananas, VOC, COCO, YOLO) is a function ``read_*(root, split, report,
limits) -> Split`` built on the shared loop of :mod:`.reader`. It never decodes
images; it returns one :class:`Record` per usable image, with boxes in the
pixel coordinates of the image as :func:`read_image` shows it, EXIF
orientation applied (xyxy, 0-based, x2/y2 exclusive as in the d2l banana CSV)
and labels ``1..C`` (0 is background). What it cannot use it records in the
:class:`Report` and skips; what makes the whole split unusable raises
:class:`DataError` with a one-line message that names the file.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.Image import DecompressionBombError
from torch import Tensor

from ..errors import DataError, escape_control
from .limits import MAX_IMAGE_PIXELS, MAX_PIXELS_ENV, DataLimits

log = logging.getLogger(__name__)

# Images with more pixels than DataLimits.max_pixels are skipped, judged from the header
# before decoding: a 13000 x 13000 PNG of a few KB decodes to 500 MB.
_PIL_LIMIT_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is lifted under it, see _open_image
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# What PIL raises for files it cannot decode; a decompression bomb is not an OSError.
UNREADABLE_ERRORS = (
    UnidentifiedImageError,
    OSError,
    ValueError,
    SyntaxError,
    DecompressionBombError,
)


class NotRegularFile(DataError):
    """A FIFO, device or socket where a file was expected: never opened (it could block)."""


class ImageTooLarge(DataError):
    """An image whose header gives more pixels than the budget; it is not decoded."""


@dataclass(frozen=True)
class Record:
    """One image and its annotations, as read from the label files.

    Attributes:
        image: path of the image file.
        boxes (Tensor[M, 4] float32): xyxy in the pixels of the image as shown (EXIF applied).
        labels (Tensor[M] int64): class ids 1..C (0 is background).
        difficult (Tensor[M] bool): VOC "difficult" (ignored by VOC evaluation).
        iscrowd (Tensor[M] bool): COCO crowd regions (ignored by COCO evaluation).
        size: (height, width) if the annotation says it, else None; of a tile, the tile's.
        window: a tile of the image (``tinyssd train --tile``): (x1, y1, x2, y2) in the
            image's pixels; the boxes and ``size`` are then the tile's. None: the whole image.
    """

    image: Path
    boxes: Tensor
    labels: Tensor
    difficult: Tensor
    iscrowd: Tensor
    size: tuple[int, int] | None = None
    window: tuple[int, int, int, int] | None = None

    def with_boxes(self, boxes: Tensor, keep: Tensor, **changes: Any) -> Record:
        """This record with the boxes ``boxes[keep]`` (``boxes``: Tensor[M, 4], this record's
        boxes moved or clipped) and their labels and flags; other fields from ``changes``."""
        return replace(
            self,
            boxes=boxes[keep],
            labels=self.labels[keep],
            difficult=self.difficult[keep],
            iscrowd=self.iscrowd[keep],
            **changes,
        )

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
            records = [replace(r, labels=new_label[r.labels]) for r in self.records]
            return Split(records, list(classes), self.root)
        if len(self.classes) <= len(classes):
            log.warning("%s: class names %s differ from %s", self.root, self.classes, classes)
            return Split(self.records, list(classes), self.root)
        raise DataError(
            f"{self.root}: classes {self.classes} do not match the training classes {classes}"
        )


# Problem kinds reported by readers and by `tinyssd data check`.
UNREADABLE_IMAGE = "unreadable image"
SPECIAL_FILE = "not a regular file: FIFO, device, socket or folder (skipped)"
TOO_LARGE_IMAGE = "image over the pixel budget (skipped)"
OUTSIDE_ROOT = "file outside the data folder (skipped)"
TOO_MANY_BOXES = "image over the box limit (extra boxes dropped)"
EXIF_FRAME = "annotation made before the EXIF rotation (boxes rotated with the image)"
BAD_BOX = "box with x1 >= x2 or y1 >= y2 (dropped)"
OUTSIDE_BOX = "box outside the image (clipped)"
UNKNOWN_CLASS = "unknown class (box dropped)"
NO_LABELS = "image without labels (kept as negative)"
MISSING_IMAGE = "label without image (skipped)"
BAD_LABEL_FILE = "unparsable label file (skipped)"
BAD_SPLIT = "unreadable split (skipped)"
DUPLICATE_IMAGE = "image listed twice (the later entry skipped with its boxes)"
AMBIGUOUS_IMAGE = "several images for one annotation (the first read, the others skipped)"
SPLIT_LEAK = "image in two splits (val then measures memorisation)"
CLASS_NAME = "class name that some outputs cannot hold (kept as is)"
# The kinds `tinyssd data check` calls errors (exit code 2): the data says two contradictory
# things, or a split cannot be read. The other kinds are handled the same way every time
# (skipped, dropped, clipped or kept, and counted).
ERRORS = frozenset({BAD_SPLIT, DUPLICATE_IMAGE, AMBIGUOUS_IMAGE, SPLIT_LEAK})


@dataclass
class Report:
    """Problems found while reading a data set, grouped by kind."""

    items: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, where: str | Path, detail: str = "") -> None:
        """Record one problem; control characters (a newline in a file name) are escaped."""
        entry = f"{where}: {detail}" if detail else str(where)
        self.items[kind].append(escape_control(entry))

    def add_unreadable(self, image: str | Path, error: DataError) -> None:
        """Record an image that ``read_image`` or ``image_size`` could not read."""
        self.add(error_kind(error, UNREADABLE_IMAGE), image, str(error).split(": ", 1)[-1])

    def count(self, kind: str) -> int:
        return len(self.items.get(kind, []))

    def errors(self) -> int:
        """How many problems are of an :data:`ERRORS` kind."""
        return sum(len(where) for kind, where in self.items.items() if kind in ERRORS)

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
            lines.append(f"{len(where):6d}  {'error: ' if kind in ERRORS else ''}{kind}")
            lines += [f"        {w}" for w in where[:first]]
            if len(where) > first:
                lines.append(f"        ... and {len(where) - first} more")
        return "\n".join(lines)


def error_kind(error: DataError, default: str) -> str:
    """The Report kind of a reader's error: special file, image too large, else ``default``."""
    if isinstance(error, NotRegularFile):
        return SPECIAL_FILE
    if isinstance(error, ImageTooLarge):
        return TOO_LARGE_IMAGE
    return default


def check_regular_file(path: str | Path) -> None:
    """Raise unless ``path`` is a regular file (symlinks followed); never opens it.

    Raises:
        NotRegularFile: a directory, FIFO, device or socket (a FIFO would block
            a reader forever).
        OSError: from ``os.stat`` (a missing file).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        what = "directory" if stat.S_ISDIR(mode) else "FIFO, device or socket"
        raise NotRegularFile(f"{path}: not a regular file ({what}); not opened")


def _open_image(path: Path, limits: DataLimits | None) -> Image.Image:
    """``Image.open`` of a regular file whose header is within the pixel budget.

    A budget raised beyond Pillow's own decompression-bomb error (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``) lifts Pillow's limit for this open only.
    """
    check_regular_file(path)
    budget = (limits or DataLimits.from_env()).max_pixels
    pil_limit = Image.MAX_IMAGE_PIXELS
    try:
        if budget == MAX_IMAGE_PIXELS or pil_limit is None or budget <= 2 * pil_limit:
            im = Image.open(path)
        else:  # a budget beyond the limit at which Pillow raises: lift Pillow's for this open
            with _PIL_LIMIT_LOCK:
                Image.MAX_IMAGE_PIXELS = None
                try:
                    im = Image.open(path)
                finally:
                    Image.MAX_IMAGE_PIXELS = pil_limit
    except DecompressionBombError as e:  # Pillow's own check fired before ours could
        raise ImageTooLarge(
            f"{path}: too large to decode: {e} (the pixel budget is {budget}; raise it with "
            f"{MAX_PIXELS_ENV})"
        ) from None
    w, h = im.size
    if w * h > budget:
        im.close()
        raise ImageTooLarge(
            f"{path}: {w}x{h} is {w * h} pixels, over the budget of {budget} "
            f"(raise it with {MAX_PIXELS_ENV})"
        )
    return im


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer images scaled by their range; float images in 0..1 scaled by 255."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray((arr * (255.0 / top)).round().astype(np.uint8))
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0  # 0..1 floats, else 0..255
        return Image.fromarray((arr * scale).clip(0, 255).round().astype(np.uint8))
    return im


def read_image(path: str | Path, limits: DataLimits | None = None) -> Tensor:
    """Decode an image file to RGB, EXIF orientation applied.

    Any mode (grey, RGBA, palette, 16-bit, float) is converted to 8-bit RGB;
    float images (TIFF mode "F") in 0..1 are scaled by 255.

    Args:
        limits: ``max_pixels`` is checked from the header before decoding
            (None: ``DataLimits.from_env()``).
    Returns:
        Tensor[3, H, W] uint8.
    Raises:
        DataError: the file is missing, truncated or not an image;
            :class:`NotRegularFile`, :class:`ImageTooLarge`.
    """
    path = Path(path)
    try:
        with _open_image(path, limits) as im:
            im = _to_8bit(ImageOps.exif_transpose(im)).convert("RGB")
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except DataError:
        raise
    except UNREADABLE_ERRORS as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def image_header(path: str | Path, limits: DataLimits | None = None) -> tuple[int, int, int]:
    """(height, width, EXIF orientation 1..8) of the image as stored, reading only its header.

    Raises:
        DataError: as :func:`read_image`.
    """
    path = Path(path)
    try:
        with _open_image(path, limits) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except DataError:
        raise
    except UNREADABLE_ERRORS as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return h, w, orientation if orientation in range(1, 9) else 1


def image_size(path: str | Path, limits: DataLimits | None = None) -> tuple[int, int]:
    """(height, width) of an image after EXIF orientation, reading only its header."""
    h, w, orientation = image_header(path, limits)
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
    return record.with_boxes(clipped, keep, size=(h, w))


def read_text(path: str | Path, max_bytes: int | None = None) -> str:
    """The text of a UTF-8 file (a BOM is dropped); one-line :class:`DataError` otherwise.

    Only regular files are opened (a FIFO would block); ``max_bytes`` bounds the size.
    """
    path = Path(path)
    try:
        check_regular_file(path)
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise DataError(f"{path}: larger than {max_bytes} bytes")
        return path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None


def read_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line, blank lines skipped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def unlistable_folder(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be listed (``"Permission denied"``), or None if it can.

    ``Path.glob`` yields nothing from a folder it may not read, so a reader that
    only globbed would see an empty folder where there is a permission problem.
    """
    try:
        with os.scandir(folder):
            return None
    except FileNotFoundError:
        return None
    except OSError as e:
        return e.strerror or type(e).__name__


def check_listable(folder: str | Path) -> None:
    """Raise DataError naming ``folder`` when it exists but cannot be listed."""
    problem = unlistable_folder(folder)
    if problem:
        raise DataError(f"{folder}: cannot list this folder ({problem}); check its permissions")


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
