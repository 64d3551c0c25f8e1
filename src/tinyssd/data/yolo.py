"""YOLO txt: one ``class cx cy w h`` row per box, normalised by the image size.

The images of split ``s`` are, in the order looked for:

- data.yaml's ``s:`` entry: a folder (searched recursively), a list of
  folders, or a ``.txt`` file listing image paths (relative to that file).
  Relative entries are resolved against data.yaml's ``path:`` if that folder
  exists, else data.yaml's folder; a missing ``../x`` is tried as ``x``, as
  Ultralytics does for Roboflow exports.
- ``images/s/`` (labels in ``labels/s/``);
- ``s/images/`` (labels in ``s/labels/``).

The label file of ``.../images/.../NAME.jpg`` is ``.../labels/.../NAME.txt``
(the last ``images`` folder below the root replaced by ``labels``; an image
outside any ``images`` folder has it beside it). Rows hold the class id
(0-based) and the box centre and size divided by the image width and height
(read from the image header, EXIF orientation applied). Class names come
from data.yaml's ``names:`` (a list, or a dict ``{id: name}``), else
``classes.txt`` at the root. Difficult and crowd flags cannot be stored.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import NamedTuple, cast

import torch
import yaml
from torch import Tensor

from ..errors import first_line
from .base import (
    IMAGE_SUFFIXES,
    MISSING_IMAGE,
    SPECIAL_FILE,
    UNKNOWN_CLASS,
    DataError,
    Record,
    Report,
    Split,
    clip_to_image,
    exists,
    image_size,
    is_file,
    link_or_copy,
    read_names,
    read_text,
)
from .limits import DataLimits
from .reader import Annotation, ImageSize, Item, Skip, read_records
from .rules import check_class_names, is_special
from .values import finite_float, free_stem, natural_key

SPLITS = ("train", "val", "test")
MAX_CLASS_ID = 2**31 - 1
MAX_YAML_BYTES = 1 << 20  # data.yaml is names and paths: a larger one is not read


class YoloLabels(NamedTuple):
    """What one YOLO label file says.

    Attributes:
        boxes (Tensor[M, 4] float32): xyxy pixels of the image.
        classes (Tensor[M] int64): class ids as written (0-based).
        lines: the line number of each box, for messages.
    """

    boxes: Tensor
    classes: Tensor
    lines: list[int]


def parse_yolo_txt(path: str | Path, width: int, height: int) -> YoloLabels:
    """Read one label file of an image ``width`` x ``height`` pixels.

    Example: ``1 0.5 0.5 0.2 0.4`` in a 100 x 50 image gives class 1 and the
    box ``[40, 15, 60, 35]``. Boxes are returned as written, even empty ones.

    Raises:
        DataError: unreadable file, a row that is not an integer class and
            four finite numbers (``path:line: ...``).
    """
    path = Path(path)
    boxes, classes, lines = [], [], []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DataError(f"{path}:{lineno}: expected 5 values (class cx cy w h), got {fields}")
        try:
            cls, cx, cy, w, h = (finite_float(v) for v in fields)  # ASCII: "٣" is no class 3
            if not cls.is_integer() or abs(cls) > MAX_CLASS_ID:
                raise ValueError
            box = [(cx - w / 2) * width, (cy - h / 2) * height]
            box = [finite_float(v) for v in (*box, (cx + w / 2) * width, (cy + h / 2) * height)]
        except ValueError:
            raise DataError(
                f"{path}:{lineno}: not an integer class and 4 numbers: {line!r}"
            ) from None
        boxes.append(box)
        classes.append(int(cls))
        lines.append(lineno)
    return YoloLabels(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(classes, dtype=torch.int64),
        lines,
    )


def is_yolo(root: Path) -> bool:
    root = Path(root)
    return (root / "data.yaml").is_file() or any(
        (root / "labels" / s).is_dir() or (root / s / "labels").is_dir() for s in SPLITS
    )


def yolo_splits(root: Path) -> dict[str, Path]:
    """Split name -> the folder or list its images come from (train, val, test if present).

    Raises:
        DataError: data.yaml is there but not valid.
    """
    _data_yaml(root)
    found = {}
    for split in SPLITS:
        try:
            found[split] = _sources(Path(root), split)[0]
        except DataError:
            continue
    return found


def yolo_classes(root: Path) -> list[str]:
    """Class names (index = class id) from data.yaml's ``names:``, else ``classes.txt``."""
    data = _data_yaml(root)
    where = Path(root) / "data.yaml"
    names = data.get("names") if data else None
    if isinstance(names, list) and names:
        return check_class_names([str(n) for n in names], where, lambda i: f"names[{i}]")
    if isinstance(names, dict) and names:
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DataError(f"{where}: names: keys must be class ids 0, 1, ...") from None
        if min(by_id) < 0 or max(by_id) > MAX_CLASS_ID or len(by_id) != max(by_id) + 1:
            raise DataError(f"{where}: names: ids must be 0..{len(by_id) - 1}")
        listed = [by_id[i] for i in range(len(by_id))]
        return check_class_names(listed, where, lambda i: f"names[{i}]")
    if names is not None:
        raise DataError(f"{where}: names: must be a non-empty list or dict of class names")
    if (Path(root) / "classes.txt").is_file():
        return check_class_names(read_names(Path(root) / "classes.txt"), Path(root) / "classes.txt")
    raise DataError(f"{root}: no class names: add data.yaml with names: or a classes.txt")


def _data_yaml(root: Path) -> dict | None:
    """data.yaml as a dict, None if absent. Aliases (``*name``) are refused: expanding them
    ("billion laughs") costs memory exponential in the file's size."""
    path = Path(root) / "data.yaml"
    if not path.is_file():
        return None
    try:
        text = read_text(path, max_bytes=MAX_YAML_BYTES)
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise DataError(f"{path}: YAML aliases (*{event.anchor}) are not allowed")
        data = yaml.safe_load(text)
    except DataError:
        raise
    except (yaml.YAMLError, RecursionError, ValueError) as e:
        raise DataError(f"{path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a YAML mapping (expected names:, train:, val:)")
    return data


def _sources(root: Path, split: str) -> list[Path]:
    """The folders or list files the split's images come from."""
    data = _data_yaml(root)
    if data and data.get(split) is not None:
        where = root / "data.yaml"
        entries = data[split] if isinstance(data[split], list) else [data[split]]
        if not all(isinstance(e, str) and e for e in entries):
            raise DataError(f"{where}: {split}: must be a path or a list of paths")
        base = root
        if isinstance(data.get("path"), str):
            base = root / data["path"] if os.path.isdir(root / data["path"]) else root
        paths = []
        for entry in entries:
            path = base / entry
            if not exists(path) and entry.startswith("../"):
                path = base / entry[3:]
            if not exists(path):
                raise DataError(f"{where}: {split}: {entry!r} not found")
            paths.append(path)
        return paths
    for folder in (root / "images" / split, root / split / "images"):
        if folder.is_dir():
            return [folder]
    raise DataError(f"{root}: no images/{split}/ or {split}/images/ folder")


def _allowed_roots(root: Path) -> list[Path]:
    """Where the images of any split may lie: ROOT, data.yaml's ``path:`` and the folders
    its ``train:`` / ``val:`` / ``test:`` name (what the user wrote is allowed)."""
    roots = [root]
    data = _data_yaml(root)
    if data and isinstance(data.get("path"), str) and os.path.isdir(root / data["path"]):
        roots.append(root / data["path"])
    for split in SPLITS:
        try:
            roots += [source for source in _sources(root, split) if source.is_dir()]
        except DataError:
            continue
    return roots


def _images(source: Path) -> list[Path]:
    """Images of a folder (recursively) or of a list file (which may name missing ones).

    FIFOs and devices in a folder are listed too, for the reader to report them.
    """
    if source.is_dir():
        found = [p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        usable = (p for p in found if p.is_file() or is_special(p))
        return sorted(usable, key=lambda p: natural_key(str(p)))
    lines = [line.strip() for line in read_text(source).splitlines() if line.strip()]
    return [source.parent / line for line in lines]


def label_path(image: Path, root: Path) -> Path:
    """``.../images/.../NAME.jpg`` -> ``.../labels/.../NAME.txt`` (see the module docstring)."""
    return _labels_folder(image.parent, root) / f"{image.stem}.txt"


def _labels_folder(folder: Path, root: Path) -> Path:
    """``folder`` with its last ``images`` part (below ``root`` if inside it) -> ``labels``."""
    try:
        prefix, parts = root, list(folder.relative_to(root).parts)
    except ValueError:
        prefix, parts = Path(), list(folder.parts)
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return prefix.joinpath(*parts)


def read_yolo(
    root: str | Path,
    split: str = "train",
    report: Report | None = None,
    limits: DataLimits | None = None,
) -> Split:
    """Read one split of a YOLO data set.

    An image without a label file, or with an empty one, is kept as a
    negative (reported); a label file without an image, or a listed image
    that does not exist, is reported and skipped; an image whose header
    cannot be read, or whose label file cannot be parsed, is reported and
    skipped; boxes with an unknown class or no area are dropped (reported),
    and so are boxes over the per-image limit (see :mod:`.rules`). Images
    that resolve outside ROOT and the folders data.yaml names (an absolute or
    ``..`` entry of a list file, a symlink out), FIFOs and devices are skipped
    (reported); so is an image whose label file is a FIFO or device.
    """
    root = Path(root)
    report = report if report is not None else Report()
    classes = yolo_classes(root)
    sources = _sources(root, split)
    roots = _allowed_roots(root) + [s for s in sources if s.is_dir()]  # linked folders too
    images = [image for source in sources for image in _images(source)]
    items = [Item(image, label_path(image, root)) for image in images]
    parse = partial(parse_yolo_item, num_classes=len(classes))
    records = read_records(items, parse, len(classes), roots, report, limits)
    _report_orphans(root, sources, images, report)
    return Split(records, classes, root)


def parse_yolo_item(item: Item, size: ImageSize, *, num_classes: int) -> Annotation:
    """The boxes of one image's label file (``item.labels``), scaled by the image's size.

    Raises:
        Skip: the listed image is missing, or its label file is a FIFO or device.
        DataError: the label file cannot be parsed.
    """
    image, label = cast(Path, item.image), cast(Path, item.labels)
    if not is_file(image):
        raise Skip(MISSING_IMAGE, image, "listed but not found")
    if is_special(label):
        raise Skip(SPECIAL_FILE, label, "label file not opened; image skipped")
    if not is_file(label):
        return Annotation([], [], empty=f"no {label.name}")
    h, w = size()
    parsed = parse_yolo_txt(label, w, h)

    def describe(i: int, kind: str) -> tuple[str, str]:
        where = f"{label}:{parsed.lines[i]}"
        if kind == UNKNOWN_CLASS:
            return where, f"class {int(parsed.classes[i])} ({num_classes} names)"
        return where, "width or height is not positive"

    labels = (parsed.classes + 1).tolist()
    return Annotation(parsed.boxes, labels, describe, size=(h, w), empty=f"{label.name} is empty")


def _report_orphans(root: Path, sources: list[Path], images: list[Path], report: Report) -> None:
    """Label files in the labels folders of the split's image folders that no image has."""
    expected = {label_path(image, root) for image in images}
    for source in sources:
        labels = _labels_folder(source, root)
        if not source.is_dir() or labels == source or not labels.is_dir():
            continue
        for txt in sorted(labels.rglob("*.txt"), key=lambda p: natural_key(str(p))):
            if txt not in expected and txt.name != "classes.txt":
                report.add(MISSING_IMAGE, txt, "no image for this label file")


def write_yolo(root: str | Path, split: str, records: list[Record], classes: list[str]) -> Path:
    """Write ``images/{split}/``, ``labels/{split}/`` and ``data.yaml`` (its split and names).

    Images are hard-linked (or copied), keeping their names unless the stem is
    taken (then prefixed with the split); every image gets a label file (empty
    for negatives). Boxes are clipped to the image first: YOLO tools reject
    coordinates outside [0, 1].
    """
    root = Path(root)
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    images_dir.mkdir(parents=True, exist_ok=True)
    labels_dir.mkdir(parents=True, exist_ok=True)
    taken = {p.stem for p in images_dir.iterdir()}
    for rec in records:
        stem = free_stem(rec.image.stem, split, taken)
        link_or_copy(rec.image, images_dir / f"{stem}{rec.image.suffix}")
        h, w = rec.size or image_size(rec.image)
        rec = clip_to_image(rec, (h, w), Report())
        rows = []
        for label, (x1, y1, x2, y2) in zip(rec.labels.tolist(), rec.boxes.tolist()):
            (cx, bw), (cy, bh) = _centre_and_extent(x1, x2, w), _centre_and_extent(y1, y2, h)
            rows.append(f"{label - 1} {cx} {cy} {bw} {bh}\n")
        (labels_dir / f"{stem}.txt").write_text("".join(rows), encoding="utf-8")
    data = {k: v for k, v in (_data_yaml(root) or {}).items() if k != "names"}
    data.update({split: f"images/{split}", "names": list(classes)})
    (root / "data.yaml").write_text(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    return root


def _centre_and_extent(lo: float, hi: float, size: int) -> tuple[str, str]:
    """A pixel interval [lo, hi] inside [0, size] as YOLO's normalised centre and extent,
    written so that the edges read back (centre -+ extent / 2) stay inside [0, 1]:
    rounding each to 8 decimals alone can put an edge at -2e-9 (-2.4e-06 px)."""
    centre = _fmt((lo + hi) / 2 / size)
    c = float(centre)
    extent = _fmt(min((hi - lo) / size, 2 * c, 2 * (1 - c)))
    while float(extent) > 0 and (c - float(extent) / 2 < 0 or c + float(extent) / 2 > 1):
        extent = _fmt(float(extent) - 1e-8)  # one step of the last written decimal
    return centre, extent


def _fmt(value: float) -> str:
    """Normalised coordinate with 8 decimals, trailing zeros dropped: ``0.5``, ``0.12345679``."""
    return f"{value + 0.0:.8f}".rstrip("0").rstrip(".")
