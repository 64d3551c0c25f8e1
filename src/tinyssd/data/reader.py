"""The one per-image loop every format's reader shares.

A format supplies two things: the list of its split's images (:class:`Item`:
an image path and what its labels are, nothing opened yet) and ``parse``,
which turns one item into an :class:`Annotation` (boxes in pixels, labels
1..C, how to name box ``i`` in a message). :func:`read_records` does the
rest, the same way for all of them:

    items -> [image missing?] -> [outside the roots, FIFO?  (rules.image_problem)]
          -> parse -> [unknown class, empty box, over the box limit  (rules.keep_boxes)]
          -> [no boxes: a negative] -> Record -> [annotated before EXIF rotation?]

Every step that drops something counts it in the :class:`Report`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from .base import (
    BAD_LABEL_FILE,
    MISSING_IMAGE,
    NO_LABELS,
    UNREADABLE_IMAGE,
    DataError,
    Record,
    Report,
    error_kind,
    image_size,
)
from .exif import to_display_frame
from .limits import DataLimits
from .rules import image_problem, keep_boxes


class Item(NamedTuple):
    """One image of a split as its format lists it; no file opened yet.

    Attributes:
        image: the image's path; None where labels name an image that is not there.
        labels: what the format's ``parse`` reads (CSV rows, a label file, COCO entries).
        where: for ``image`` None, the place reported as MISSING_IMAGE.
        note: the detail of entries about the image itself (missing, outside, special).
    """

    image: Path | None
    labels: Any = None
    where: str | Path = ""
    note: str = ""


class Annotation(NamedTuple):
    """What a format's labels say about one image.

    Attributes:
        boxes (Tensor[M, 4] or M lists): xyxy pixels, as written (even empty ones).
        labels: M labels 1..C; 0 for a class the split does not know.
        describe: ``(i, kind) -> (where, detail)`` of the report entry of box i.
        difficult, iscrowd: M flags, or None (all False).
        size: (height, width) the labels were made on, if they say.
        empty: the detail of the NO_LABELS entry when there is no box at all.
    """

    boxes: Tensor | Sequence[Sequence[float]]
    labels: Sequence[int]
    describe: Callable[[int, str], tuple[str, str]] = lambda i, kind: ("", "")
    difficult: Any = None
    iscrowd: Any = None
    size: tuple[int, int] | None = None
    empty: str = ""


class Skip(Exception):
    """Raised by ``parse``: leave the image out, reported as ``kind`` at ``where``."""

    def __init__(self, kind: str, where: str | Path, detail: str = "") -> None:
        super().__init__(kind, where, detail)
        self.kind, self.where, self.detail = kind, where, detail


ImageSize = Callable[[], tuple[int, int]]  # reads the image header: (height, width) after EXIF
Parse = Callable[[Item, ImageSize], Annotation]  # one item's labels, pure but for ``size()``


def read_records(
    items: Iterable[Item],
    parse: Parse,
    num_classes: int,
    roots: Sequence[str | Path],
    report: Report,
    limits: DataLimits | None = None,
    *,
    follow_symlinks: bool = True,
    exif_frame: bool = False,
) -> list[Record]:
    """The records of ``items``; what cannot be used is counted in ``report`` and left out.

    Args:
        roots, follow_symlinks: where images may lie (see :func:`rules.image_problem`).
        limits: the box limit and the pixel budget of header reads (None: from the
            environment).
        exif_frame: the labels give the size they were made on; turn boxes made
            before the EXIF rotation with the image (see :mod:`.exif`).
    Raises:
        DataError: ``parse`` found the whole split unusable.
    """
    limits = limits or DataLimits.from_env()
    records = []
    for item in items:
        try:
            record = _read_one(item, parse, num_classes, roots, report, limits, follow_symlinks)
        except Skip as skip:
            report.add(skip.kind, skip.where, skip.detail)
            continue
        records.append(to_display_frame(record, report, limits) if exif_frame else record)
    return records


def _read_one(
    item: Item,
    parse: Parse,
    num_classes: int,
    roots: Sequence[str | Path],
    report: Report,
    limits: DataLimits,
    follow_symlinks: bool,
) -> Record:
    if item.image is None:
        raise Skip(MISSING_IMAGE, item.where, item.note)
    image = item.image
    problem = image_problem(image, roots, follow_symlinks)
    if problem:
        raise Skip(problem, image, item.note)

    def size() -> tuple[int, int]:
        try:
            return image_size(image, limits)
        except DataError as e:
            raise Skip(error_kind(e, UNREADABLE_IMAGE), image, str(e).split(": ", 1)[-1]) from None

    try:
        ann = parse(item, size)
    except DataError as e:
        raise Skip(error_kind(e, BAD_LABEL_FILE), str(e)) from None
    keep = keep_boxes(ann.boxes, ann.labels, num_classes, image, report, ann.describe, limits)
    if not len(ann.labels):
        report.add(NO_LABELS, image, ann.empty)
    boxes = np.asarray(ann.boxes, dtype=np.float32).reshape(-1, 4)
    return Record.make(
        image,
        boxes[keep],
        [ann.labels[i] for i in keep],
        None if ann.difficult is None else np.asarray(ann.difficult, dtype=bool)[keep],
        None if ann.iscrowd is None else np.asarray(ann.iscrowd, dtype=bool)[keep],
        ann.size,
    )
