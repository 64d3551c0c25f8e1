"""Data sets: readers for each format behind one interface, and the torch Dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .bananas import is_bananas, read_bananas
from .base import DataError, Record, Report, Split, read_image
from .dataset import DetectionDataset, collate

Reader = Callable[..., Split]

# format name -> (detector(root) -> bool, reader(root, split, report) -> Split)
FORMATS: dict[str, tuple[Callable[[Path], bool], Reader]] = {
    "bananas": (is_bananas, read_bananas),
}


def detect_format(root: str | Path) -> str:
    """The name of the first format in FORMATS whose layout ``root`` has."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    for name, (detect, _) in FORMATS.items():
        if detect(root):
            return name
    raise DataError(f"{root}: no known data layout found (expected one of: {', '.join(FORMATS)})")


def load_split(
    root: str | Path, split: str = "train", format: str = "auto", report: Report | None = None
) -> Split:
    """Read one split of the data set at ``root`` in ``format`` (``auto`` detects it)."""
    name = detect_format(root) if format == "auto" else format
    if name not in FORMATS:
        raise DataError(f"unknown data format {name!r} (choose from auto, {', '.join(FORMATS)})")
    return FORMATS[name][1](Path(root), split, report if report is not None else Report())


__all__ = [
    "FORMATS",
    "DataError",
    "DetectionDataset",
    "Record",
    "Report",
    "Split",
    "collate",
    "detect_format",
    "load_split",
    "read_bananas",
    "read_image",
]
