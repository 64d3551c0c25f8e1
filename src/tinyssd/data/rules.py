"""What every reader refuses, in one place: files it may not open, boxes it does not keep.

- An image a label file names must resolve (symlinks followed) inside the
  data folder, or inside a folder the user named (YOLO ``data.yaml``'s
  ``path:``, ``train:``, ``val:``): a COCO ``file_name`` of ``/etc/x.jpg`` or
  ``../../x.jpg``, or a symlink out of the folder, is skipped and counted, and
  ``data convert`` never links it into its output.
- FIFOs, devices and sockets are never opened (a FIFO blocks the reader).
- A box is kept if its class is known and it has an area, up to
  ``DataLimits.max_boxes`` per image (the first ones), so that the cost
  of matching stays bounded.
- Class names must be told apart: an empty name, or a name used twice (boxes
  of either would be read as the first), makes the class list unusable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from .base import (
    BAD_BOX,
    OUTSIDE_ROOT,
    SPECIAL_FILE,
    TOO_MANY_BOXES,
    UNKNOWN_CLASS,
    DataError,
    Report,
)
from .limits import MAX_BOXES_ENV, DataLimits

# Class ids at or above this are taken as broken rows, not as a class list to allocate.
MAX_CLASSES = 100_000


def keep_boxes(
    boxes: Tensor | Sequence[Sequence[float]],
    labels: Sequence[int],
    num_classes: int,
    image: str | Path,
    report: Report,
    describe: Callable[[int, str], tuple[str, str]],
    limits: DataLimits | None = None,
) -> list[int]:
    """Indices of the boxes a reader keeps; what it drops is reported.

    Dropped, in this order: a label outside ``1..num_classes`` (UNKNOWN_CLASS),
    ``x1 >= x2 or y1 >= y2`` (BAD_BOX), and all boxes after the first
    ``limits.max_boxes`` kept ones (one TOO_MANY_BOXES entry for the image; None:
    ``DataLimits.from_env()``).

    Args:
        boxes (Tensor[M, 4] or M lists): xyxy.
        labels: M labels, 1..C where known (readers pass 0 or -1 for an unknown name).
        describe: ``(i, kind) -> (where, detail)`` for the report entry of box i,
            in the words of its format (``"a.xml", "object 3: class 'plum'"``).
    Example:
        labels ``[1, 9, 1]``, boxes ``[[0, 0, 5, 5], [0, 0, 5, 5], [5, 0, 5, 5]]``,
        2 classes: ``[0]`` (box 1 unknown class, box 2 empty).
    """
    rows = boxes.tolist() if isinstance(boxes, Tensor) else [list(b) for b in boxes]
    limit = (limits or DataLimits.from_env()).max_boxes
    keep = []
    for i, (label, (x1, y1, x2, y2)) in enumerate(zip(labels, rows)):
        kind = None
        if not 1 <= label <= num_classes:
            kind = UNKNOWN_CLASS
        elif x1 >= x2 or y1 >= y2:
            kind = BAD_BOX
        if kind is not None:
            report.add(kind, *describe(i, kind))
        else:
            keep.append(i)
    if len(keep) > limit:
        report.add(
            TOO_MANY_BOXES,
            image,
            f"{len(keep)} boxes, kept the first {limit} (raise it with {MAX_BOXES_ENV})",
        )
        keep = keep[:limit]
    return keep


def resolve(path: str | Path) -> Path:
    """``path`` with symlinks and ``..`` resolved (``os.path.realpath``)."""
    return Path(os.path.realpath(path))


def is_inside(path: str | Path, roots: Sequence[str | Path], follow_symlinks: bool = True) -> bool:
    """Whether ``path`` lies in one of ``roots``: with symlinks followed (both resolved),
    or, with ``follow_symlinks=False``, by its written path alone (``..`` resolved)."""
    if not follow_symlinks:
        plain = Path(os.path.abspath(path))
        return any(plain.is_relative_to(os.path.abspath(root)) for root in roots)
    real = resolve(path)
    return any(real.is_relative_to(resolve(root)) for root in roots)


def image_problem(
    path: str | Path, roots: Sequence[str | Path], follow_symlinks: bool = True
) -> str | None:
    """Why a reader may not use the image at ``path``: a Report kind, or None if it may.

    ``follow_symlinks``: True where the path comes from text in a label file
    (COCO ``file_name``, a YOLO list): a symlink out of ``roots`` is outside.
    False where the reader found the file in the data set's own folders
    (bananas, VOC): what the user placed there, links included, is theirs.

    ``MISSING_IMAGE`` is left to the caller (its words differ per format): a
    path that does not exist gives None here only if it is inside ``roots``.

    Returns:
        OUTSIDE_ROOT (resolves outside every root), SPECIAL_FILE (a FIFO,
        device, socket or folder), or None.
    """
    if not is_inside(path, roots, follow_symlinks):
        return OUTSIDE_ROOT
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    return None if stat.S_ISREG(mode) else SPECIAL_FILE


def is_special(path: str | Path) -> bool:
    """Whether ``path`` exists and is not a regular file or folder (FIFO, device, socket)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def refused_class_names(names: Sequence[str]) -> list[tuple[int, int | None]]:
    """``(i, first)`` for each name of ``names`` a reader refuses: empty or only spaces
    (``first`` None), or the same as ``names[first]``, an earlier one.

    Example: ``["cat", "", "cat"]`` gives ``[(1, None), (2, 0)]``.
    """
    refused: list[tuple[int, int | None]] = []
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            refused.append((i, None))
        elif name in first:
            refused.append((i, first[name]))
        else:
            first[name] = i
    return refused


def check_class_names(
    names: list[str],
    source: str | Path,
    where: Callable[[int], str] = lambda i: f"class {i + 1}",
    most: int = 3,
) -> list[str]:
    """``names``, or a one-line DataError naming ``source`` and each name it refuses
    (:func:`refused_class_names`, the first ``most``) by ``where(i)`` (``"categories[2]"``).

    Example: ``["cat", "cat"]`` from ``classes.txt`` raises
    ``classes.txt: class 2: class name 'cat' is also class 1's (...)``.
    """
    refused = refused_class_names(names)
    if not refused:
        return names
    parts = [
        f"{where(i)}: empty class name"
        if first is None
        else f"{where(i)}: class name {names[i]!r} is also {where(first)}'s"
        for i, first in refused[:most]
    ]
    if len(refused) > most:
        parts.append(f"and {len(refused) - most} more")
    raise DataError(f"{source}: {'; '.join(parts)} (class names must be distinct and not empty)")


def class_name_caveat(name: str) -> str | None:
    """What a class name that readers keep cannot go through, or None.

    A control character (a newline) cannot be a line of ``classes.txt`` or of a
    table; a comma cannot be named in ``--classes-map OLD=NEW,...``.
    """
    if not all(c.isprintable() for c in name):
        return "holds a control character such as a newline (classes.txt and tables cannot)"
    if "," in name:
        return "holds a comma (--classes-map cannot name it)"
    return None
