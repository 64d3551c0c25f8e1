"""``tinyssd data convert SRC --to voc|coco|yolo|bananas OUT``: one layout to another.

    $ tinyssd data convert data/pets-voc --to yolo data/pets-yolo

Every split present in SRC is written to OUT in the target layout, images
hard-linked where the file system allows (else copied), class names and
their order kept. Difficult and crowd flags go where the target can hold
them: VOC keeps difficult (crowd regions become difficult objects), COCO
keeps both, YOLO and the banana CSV neither. Boxes are written as read,
except for YOLO, whose tools reject boxes outside the image: they are
clipped. Problems found on the way are logged as ``tinyssd data check``
reports them; what cannot be used is left out (so no file from outside SRC
that a label file names is ever linked into OUT). Class names that the
target cannot hold unchanged (a newline in a ``classes.txt`` line) are an
error, not a silent relabel; readers refuse empty and repeated names. Each
split's log line counts the images read but left out.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import cast

from . import FORMATS, resolve_format
from .base import DataError, Record, Report, clip_to_image, image_size
from .limits import DataLimits

log = logging.getLogger(__name__)


def convert(
    src: str | Path,
    to: str,
    out: str | Path,
    format: str = "auto",
    limits: DataLimits | None = None,
) -> Path:
    """Write the data set at ``src`` (in ``format``, ``auto`` detects it) to ``out`` as ``to``.

    ``limits``: what the readers accept (None: ``DataLimits.from_env()``).

    Returns:
        ``out``.
    Raises:
        DataError: unknown format or layout, ``out`` not empty, a split that
            cannot be read, splits that name different classes, or a class
            name the target cannot hold (see :func:`class_name_problem`).
    """
    src, out = Path(src), Path(out)
    if to not in FORMATS:
        raise DataError(f"unknown target format {to!r} (choose from {', '.join(FORMATS)})")
    name = resolve_format(src, format)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: the output folder must be new or empty")
    sources = FORMATS[name].splits(src)
    if not sources:
        raise DataError(f"{src}: no train, val or test split found in its {name} layout")
    report = Report()
    limits = limits or DataLimits.from_env()
    # Read everything first: a split that cannot be read leaves no half-written output.
    splits = {split: FORMATS[name].read(src, split, report, limits) for split in sources}
    first, *others = splits.items()
    for split, data in others:
        if data.classes != first[1].classes:
            raise DataError(
                f"{src}: {first[0]} and {split} name different classes "
                f"({first[1].classes} vs {data.classes}); give them one classes.txt"
            )
    check_target_names(first[1].classes, to, src)
    for split, data in splits.items():
        records = with_image_sizes(data.records, report, limits)
        if to == "yolo":
            # with_image_sizes gave every record its size
            records = [
                clip_to_image(rec, cast(tuple[int, int], rec.size), report) for rec in records
            ]
        flags = sum(int((rec.difficult | rec.iscrowd).sum()) for rec in records)
        if flags and to in ("yolo", "bananas"):
            log.warning(
                "%s: %d difficult or crowd flags dropped (%s has no place for them)",
                split,
                flags,
                to,
            )
        FORMATS[to].write(out, split, records, data.classes)
        boxes = sum(len(rec.labels) for rec in records)
        left_out = len(data.records) - len(records)
        log.info(
            "%s: %d images, %d boxes written%s",
            split,
            len(records),
            boxes,
            f" ({left_out} read but left out: header unreadable, listed below)" if left_out else "",
        )
    if report:
        log.warning("problems in %s:\n%s", src, report.summary())
    return out


def class_name_problem(name: str, to: str) -> str | None:
    """Why class ``name`` would not come back unchanged from format ``to``, or None.

    Every format needs a UTF-8 name (readers refuse empty and repeated ones:
    ``rules.check_class_names``); VOC and the banana layout keep names one per
    line in ``classes.txt`` (and VOC in stripped ``<name>`` text), so a control
    character (a newline) or a leading or trailing space would change the name
    or the number of classes.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8"
    if to in ("voc", "bananas"):
        if not all(c.isprintable() for c in name):
            return "it holds a control character such as a newline"
        if name != name.strip():
            return "it starts or ends with a space"
    return None


def check_target_names(classes: list[str], to: str, src: Path) -> None:
    """Raise DataError for the first class name ``to`` cannot hold."""
    for i, name in enumerate(classes, start=1):
        problem = class_name_problem(name, to)
        if problem:
            raise DataError(f"{src}: class {i} {name!r} cannot be written as {to}: {problem}")


def with_image_sizes(
    records: list[Record], report: Report, limits: DataLimits | None = None
) -> list[Record]:
    """Records with ``size`` read from the image headers; unreadable images reported, left out."""
    sized = []
    for rec in records:
        try:
            sized.append(dataclasses.replace(rec, size=image_size(rec.image, limits)))
        except DataError as e:
            report.add_unreadable(rec.image, e)
    return sized
