"""The d2l banana layout: ``bananas_{train,val}/label.csv`` + ``images/``.

``label.csv`` has the header ``img_name,label,xmin,ymin,xmax,ymax`` (pixels,
label 0-based) and any number of rows per image. An optional ``classes.txt``
beside the split folders names the classes, one per line; without it the
single class of the d2l data set is called "banana".
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from .base import (
    BAD_BOX,
    BAD_LABEL_FILE,
    IMAGE_SUFFIXES,
    MISSING_IMAGE,
    NO_LABELS,
    UNKNOWN_CLASS,
    DataError,
    Record,
    Report,
    Split,
)

HEADER = ["img_name", "label", "xmin", "ymin", "xmax", "ymax"]


def split_dir(root: Path, split: str) -> Path:
    return Path(root) / f"bananas_{split}"


def is_bananas(root: Path) -> bool:
    return any((Path(root) / f"bananas_{s}" / "label.csv").is_file() for s in ("train", "val"))


def read_classes(root: Path, num_labels: int) -> list[str]:
    """Class names from ``root/classes.txt``, else "banana" (one class) or "class{i}"."""
    path = Path(root) / "classes.txt"
    if path.is_file():
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
        if names:
            return names
    if num_labels <= 1:
        return ["banana"]
    return [f"class{i}" for i in range(num_labels)]


def read_bananas(root: str | Path, split: str = "train", report: Report | None = None) -> Split:
    """Read one split of the banana layout.

    Rows with x1 >= x2 or y1 >= y2, or a label outside the class list, are
    dropped and reported; images in ``images/`` with no rows are kept as
    negatives; rows naming a missing image are reported and skipped.
    """
    root = Path(root)
    report = report if report is not None else Report()
    folder = split_dir(root, split)
    csv_path = folder / "label.csv"
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: label file not found")
    rows: dict[str, list[tuple[int, list[float]]]] = defaultdict(list)
    try:
        with csv_path.open(newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header != HEADER:
                raise DataError(f"{csv_path}:1: header must be {','.join(HEADER)}, got {header}")
            for lineno, row in enumerate(reader, start=2):
                if not row or all(not c.strip() for c in row):
                    continue
                try:
                    name = row[0].strip()
                    label = int(row[1])
                    box = [float(v) for v in row[2:6]]
                    if len(row) != 6 or not name:
                        raise ValueError
                except (ValueError, IndexError):
                    report.add(BAD_LABEL_FILE, f"{csv_path}:{lineno}", f"cannot parse {row}")
                    continue
                rows[name].append((label, box, lineno))
    except UnicodeDecodeError:
        raise DataError(f"{csv_path}: not a text CSV file") from None
    max_label = max((lab for rs in rows.values() for lab, _, _ in rs), default=0)
    classes = read_classes(root, max_label + 1)
    images_dir = folder / "images"
    on_disk = (
        {p.name for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
        if images_dir.is_dir()
        else set()
    )
    records = []
    for name in sorted(set(rows) | on_disk, key=_natural_key):
        if name not in on_disk:
            report.add(MISSING_IMAGE, images_dir / name)
            continue
        boxes, labels = [], []
        for label, (x1, y1, x2, y2), lineno in rows.get(name, []):
            if not 0 <= label < len(classes):
                report.add(UNKNOWN_CLASS, f"{csv_path}:{lineno}", f"label {label}")
            elif x1 >= x2 or y1 >= y2:
                report.add(BAD_BOX, f"{csv_path}:{lineno}", f"({x1}, {y1}, {x2}, {y2})")
            else:
                boxes.append([x1, y1, x2, y2])
                labels.append(label + 1)
        if name not in rows:
            report.add(NO_LABELS, images_dir / name)
        records.append(Record.make(images_dir / name, boxes, labels))
    return Split(records, classes, root)


def write_bananas(
    root: str | Path, split: str, rows: list[tuple[str, int, float, float, float, float]]
) -> Path:
    """Write ``bananas_{split}/label.csv`` (images are written by the caller)."""
    folder = split_dir(Path(root), split)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "label.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for name, label, *box in rows:
            w.writerow([name, label, *(_fmt(v) for v in box)])
    return path


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _natural_key(name: str) -> tuple:
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)
