"""The d2l banana layout: ``bananas_{train,val}/label.csv`` + ``images/``.

``label.csv`` has the header ``img_name,label,xmin,ymin,xmax,ymax`` (pixels,
label 0-based) and any number of rows per image. An optional ``classes.txt``
beside the split folders names the classes, one per line; without it the
single class of the d2l data set is called "banana". Difficult and crowd
flags cannot be stored.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .base import (
    BAD_LABEL_FILE,
    IMAGE_SUFFIXES,
    UNKNOWN_CLASS,
    DataError,
    Record,
    Report,
    Split,
    exists,
    link_or_copy,
    read_names,
    read_text,
)
from .limits import DataLimits
from .reader import Annotation, ImageSize, Item, read_records
from .rules import MAX_CLASSES, check_class_names
from .values import class_index, finite_float, free_stem, natural_key, tidy_number

HEADER = ["img_name", "label", "xmin", "ymin", "xmax", "ymax"]


def split_dir(root: Path, split: str) -> Path:
    return Path(root) / f"bananas_{split}"


def is_bananas(root: Path) -> bool:
    return any((Path(root) / f"bananas_{s}" / "label.csv").is_file() for s in ("train", "val"))


def bananas_splits(root: Path) -> dict[str, Path]:
    """Split name -> its ``label.csv``, for the splits present (train, val, test)."""
    found = {s: split_dir(root, s) / "label.csv" for s in ("train", "val", "test")}
    return {s: path for s, path in found.items() if path.is_file()}


def read_classes(root: Path, num_labels: int) -> list[str]:
    """Class names from ``root/classes.txt``, else "banana" (one class) or "class{i}"."""
    path = Path(root) / "classes.txt"
    if path.is_file():
        names = check_class_names(read_names(path), path)
        if names:
            return names
    if num_labels <= 1:
        return ["banana"]
    return [f"class{i}" for i in range(num_labels)]


def read_bananas(
    root: str | Path,
    split: str = "train",
    report: Report | None = None,
    limits: DataLimits | None = None,
) -> Split:
    """Read one split of the banana layout.

    Rows with x1 >= x2 or y1 >= y2, or a label outside the class list, are
    dropped and reported; images in ``images/`` with no rows are kept as
    negatives; rows naming a missing image are reported and skipped. Without
    ``classes.txt`` the largest label sets the number of classes, but labels
    of MAX_CLASSES or more are taken as broken rows (unknown class).
    """
    root = Path(root)
    report = report if report is not None else Report()
    csv_path = split_dir(root, split) / "label.csv"
    rows = read_label_csv(csv_path, report)
    labels_seen = (lab for rs in rows.values() for lab, _, _ in rs if 0 <= lab < MAX_CLASSES)
    classes = read_classes(root, max(labels_seen, default=0) + 1)
    items = bananas_items(split_dir(root, split), rows)
    parse = partial(parse_bananas_rows, csv_path=csv_path)
    records = read_records(
        items, parse, len(classes), [root], report, limits, follow_symlinks=False
    )
    return Split(records, classes, root)


Rows = dict[str, list[tuple[int, list[float], int]]]  # image name -> (label, box, line) rows


def read_label_csv(csv_path: Path, report: Report) -> Rows:
    """The rows of ``label.csv`` by image name; unparsable rows reported and skipped
    (a label must be a class index in ASCII digits: not ``1.0``, ``-1`` or ``٣``).

    Raises:
        DataError: no such file, not a text CSV file, or a wrong header.
    """
    if not exists(csv_path):
        raise DataError(f"{csv_path}: label file not found")
    try:
        text = read_text(csv_path)
    except DataError as e:
        raise DataError(str(e).replace("not a UTF-8 text file", "not a text CSV file")) from None
    rows: Rows = defaultdict(list)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = [h.strip() for h in next(reader, [])]
        if header != HEADER:
            raise DataError(f"{csv_path}:1: header must be {','.join(HEADER)}, got {header}")
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 6 or not row[0].strip():
                report.add(BAD_LABEL_FILE, f"{csv_path}:{lineno}", f"cannot parse {row}")
                continue
            try:
                label = class_index(row[1])
                box = [finite_float(v) for v in row[2:6]]
            except ValueError as e:
                report.add(BAD_LABEL_FILE, f"{csv_path}:{lineno}", f"{e}: {row}")
                continue
            name = row[0].strip()
            rows[name].append((label, box, lineno))
    except csv.Error as e:
        raise DataError(f"{csv_path}: not a readable CSV file ({e})") from None
    return dict(rows)


def bananas_items(folder: Path, rows: Rows) -> list[Item]:
    """One item per image named by a row or found in ``images/``, in natural name order."""
    images_dir = folder / "images"
    on_disk = (
        {p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        if images_dir.is_dir()
        else set()
    )
    return [
        Item(images_dir / name, rows.get(name, []))
        if name in on_disk
        else Item(None, where=images_dir / name)
        for name in sorted(set(rows) | on_disk, key=natural_key)
    ]


def parse_bananas_rows(item: Item, size: ImageSize | None = None, *, csv_path: Path) -> Annotation:
    """The boxes of one image's CSV rows (labels 0-based in the file, 1..C here)."""
    image_rows = item.labels

    def describe(i: int, kind: str) -> tuple[str, str]:
        label, (x1, y1, x2, y2), lineno = image_rows[i]
        detail = f"label {label}" if kind == UNKNOWN_CLASS else f"({x1}, {y1}, {x2}, {y2})"
        return f"{csv_path}:{lineno}", detail

    boxes = [box for _, box, _ in image_rows]
    return Annotation(boxes, [label + 1 for label, _, _ in image_rows], describe)


def write_bananas(
    root: str | Path, split: str, rows: Sequence[tuple[str, int, float, float, float, float]]
) -> Path:
    """Write ``bananas_{split}/label.csv`` (images are written by the caller)."""
    folder = split_dir(Path(root), split)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "label.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for name, label, *box in rows:
            w.writerow([name, label, *(tidy_number(v) for v in box)])
    return path


def write_bananas_records(
    root: str | Path, split: str, records: list[Record], classes: list[str]
) -> Path:
    """Write one split from records: ``label.csv``, the images and ``classes.txt``; return root.

    Images are hard-linked (or copied) into ``bananas_{split}/images/``, keeping
    their names unless the name is taken there (then prefixed with the split).
    Difficult and crowd flags are dropped: the CSV has no column for them.
    """
    root = Path(root)
    images = split_dir(root, split) / "images"
    images.mkdir(parents=True, exist_ok=True)
    taken = {p.stem for p in images.iterdir()}
    rows = []
    for rec in records:
        name = free_stem(rec.image.stem, split, taken) + rec.image.suffix
        link_or_copy(rec.image, images / name)
        for label, box in zip(rec.labels.tolist(), rec.boxes.tolist()):
            rows.append((name, label - 1, *box))
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in classes), encoding="utf-8")
    write_bananas(root, split, rows)
    return root
