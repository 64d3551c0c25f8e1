"""Data sets: readers for each format behind one interface, and the torch Dataset."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..options import FORMAT_NAMES
from .bananas import bananas_splits, is_bananas, read_bananas, write_bananas_records
from .base import DataError, Record, Report, Split, read_image, unlistable_folder
from .coco import coco_splits, is_coco, parse_coco_json, read_coco, write_coco
from .dataset import DetectionDataset, collate
from .limits import DataLimits
from .voc import is_voc, parse_voc_xml, read_voc, voc_splits, write_voc
from .yolo import is_yolo, parse_yolo_txt, read_yolo, write_yolo, yolo_splits

Reader = Callable[..., Split]


class Format(NamedTuple):
    """What tinyssd knows of one data layout."""

    detect: Callable[[Path], bool]  # does this folder have the layout?
    splits: Callable[[Path], dict[str, Path]]  # split present -> the file or folder it reads
    read: Reader  # (root, split, report, limits) -> Split
    write: Callable[[Path, str, list[Record], list[str]], Path]  # (root, split, records, classes)


_LAYOUTS = {
    "bananas": Format(is_bananas, bananas_splits, read_bananas, write_bananas_records),
    "voc": Format(is_voc, voc_splits, read_voc, write_voc),
    "coco": Format(is_coco, coco_splits, read_coco, write_coco),
    "yolo": Format(is_yolo, yolo_splits, read_yolo, write_yolo),
}
if set(_LAYOUTS) != set(FORMAT_NAMES):
    raise ImportError(f"formats {sorted(_LAYOUTS)} differ from options.FORMAT_NAMES")
# Keyed by options.FORMAT_NAMES, in its order: detection tries them in this order.
FORMATS: dict[str, Format] = {name: _LAYOUTS[name] for name in FORMAT_NAMES}


def detect_format(root: str | Path) -> str:
    """The name of the first format in FORMATS whose layout ``root`` has."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    for name, fmt in FORMATS.items():
        if fmt.detect(root):
            return name
    for folder in (root, *_subfolders(root)):
        problem = unlistable_folder(folder)
        if problem:
            raise DataError(
                f"{folder}: cannot list this folder ({problem}), so no data layout can be "
                f"found in {root}; check its permissions"
            )
    raise DataError(f"{root}: no known data layout found (expected one of: {', '.join(FORMATS)})")


def _subfolders(root: Path) -> list[Path]:
    """The folders directly in ``root`` (none if it cannot be listed)."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


def resolve_format(root: str | Path, format: str = "auto") -> str:
    """``format``, or the detected one for ``auto``; DataError for an unknown name."""
    if not Path(root).is_dir():
        raise DataError(f"{root}: data folder not found")
    name = detect_format(root) if format == "auto" else format
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r} (choose from auto, {', '.join(FORMATS)})")
    return name


def load_split(
    root: str | Path,
    split: str = "train",
    format: str = "auto",
    report: Report | None = None,
    limits: DataLimits | None = None,
) -> Split:
    """Read one split of the data set at ``root`` in ``format`` (``auto`` detects it).

    ``limits``: the pixel budget and box limit (None: ``DataLimits.from_env()``).
    """
    reader = FORMATS[resolve_format(root, format)].read
    return reader(Path(root), split, report if report is not None else Report(), limits)


def has_own_val(root: str | Path, format: str = "auto") -> bool:
    """Whether the data set at ``root`` has a val split read from other files than train's
    (a flat VOC folder is both: it has none)."""
    sources = FORMATS[resolve_format(root, format)].splits(Path(root))
    return "val" in sources and sources["val"] != sources.get("train")


def split_off_val(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """(train, val): about ``fraction`` of ``split``'s images drawn as val, seeded.

    Stratified by each image's rarest class (images without boxes form their own
    group), so that a class of few images still has some in val where it can: with
    ``fraction`` 0.25, 8 images of ``a`` and 4 of ``b`` give 2 and 1 val images.
    At least one image goes to each side; fewer than 2 images is a DataError.
    """
    records = split.records
    if len(records) < 2:
        raise DataError(f"{split.root}: {len(records)} training image(s) are too few to split")
    counts: dict[int, int] = {}
    for rec in records:
        for label in rec.labels.tolist():
            counts[label] = counts.get(label, 0) + 1
    groups: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        key = min(rec.labels.tolist(), key=lambda label: (counts[label], label), default=0)
        groups.setdefault(key, []).append(i)
    rng = random.Random(seed)
    val_index: list[int] = []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        val_index += members[: round(fraction * len(members))]
    if not val_index:
        val_index = [rng.randrange(len(records))]
    if len(val_index) == len(records):
        val_index.pop()
    chosen = set(val_index)
    train = [r for i, r in enumerate(records) if i not in chosen]
    val = [r for i, r in enumerate(records) if i in chosen]
    return Split(train, split.classes, split.root), Split(val, split.classes, split.root)


__all__ = [
    "FORMATS",
    "DataError",
    "DataLimits",
    "DetectionDataset",
    "Format",
    "Record",
    "Report",
    "Split",
    "collate",
    "detect_format",
    "has_own_val",
    "is_bananas",
    "is_coco",
    "is_voc",
    "is_yolo",
    "load_split",
    "parse_coco_json",
    "parse_voc_xml",
    "parse_yolo_txt",
    "read_bananas",
    "read_coco",
    "read_image",
    "read_voc",
    "read_yolo",
    "resolve_format",
    "split_off_val",
    "write_coco",
    "write_voc",
    "write_yolo",
]
