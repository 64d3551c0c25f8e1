"""COCO JSON: ``annotations/instances_{split}*.json`` and the images it names.

The file of split ``s`` is ``annotations/instances_s.json``, else the one
``annotations/instances_s*.json`` (``instances_val2017.json``). Each image's
``file_name`` is relative to the one of these folders that holds most of the
first images listed (the earliest on a tie): ``images/<tag>/``, ``<tag>/``
(``<tag>`` is what follows ``instances_``, e.g. ``val2017``), ``images/s*/``,
``s*/``, ``images/``, the root.

Boxes: COCO's ``[x, y, width, height]`` in pixels become ``[x, y, x + width,
y + height]``. ``iscrowd`` is kept (and ``"difficult": 1``, which tinyssd
writes for VOC's difficult objects, is read back). Category ids need not be
contiguous: they become labels 1..C in id order, named by ``categories``;
two categories of one name, or one without a name, make the file unusable.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeGuard, cast

from .base import (
    BAD_LABEL_FILE,
    CLASS_NAME,
    DUPLICATE_IMAGE,
    MISSING_IMAGE,
    UNKNOWN_CLASS,
    DataError,
    Record,
    Report,
    Split,
    check_regular_file,
    image_size,
    is_file,
    link_or_copy,
)
from .limits import DataLimits
from .reader import Annotation, ImageSize, Item, Skip, read_records
from .rules import check_class_names, class_name_caveat, image_problem
from .values import finite_float, free_stem, read_flag, tidy_number

SPLITS = ("train", "val", "test")
PROBE = 50  # file names tried per candidate image folder
MAX_INT_DIGITS = 30  # longer integer literals are read as floats (inf), not as a bignum


class CocoImage(NamedTuple):
    id: int | str
    file_name: str
    size: tuple[int, int] | None  # (height, width) if the file gives both


class CocoBox(NamedTuple):
    # The public field shadows the tuple's index() method, which mypy rejects in a NamedTuple.
    index: int  # type: ignore[assignment]  # position in "annotations", for messages
    image_id: int | str
    category_id: int
    box: tuple[float, float, float, float]  # xyxy pixels
    iscrowd: bool
    difficult: bool


class CocoFile(NamedTuple):
    """A parsed COCO file. ``problems`` are entries skipped: ``"annotations[7]: ..."``."""

    images: list[CocoImage]
    boxes: list[CocoBox]
    categories: list[tuple[int, str]]  # (id, name), sorted by id
    problems: list[str]


def parse_coco_json(path: str | Path) -> CocoFile:
    """Read a COCO instances file.

    Example: ``"bbox": [10, 20, 30, 40]`` gives the box ``(10, 20, 40, 60)``.
    An image or annotation entry that cannot be used (no id, a bbox that is
    not four finite numbers, an ``iscrowd`` that is not a 0/1 flag, ...) is
    skipped and listed in ``problems``; flags may be numbers, booleans or
    strings (``"0"`` and ``"false"`` are false).

    Raises:
        DataError: unreadable file, invalid JSON, no ``images`` list, or a
            ``categories`` list that does not give an integer id and a name
            to every category, or gives two the same name (or an empty one).
    """
    path = Path(path)
    try:
        check_regular_file(path)
        data = json.loads(path.read_bytes(), parse_int=_parse_int)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 JSON file") from None
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: not usable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO file (no 'images' list)")
    categories = _categories(path, data.get("categories"))
    problems: list[str] = []
    images, image_ids = [], set()
    for i, entry in enumerate(data["images"]):
        try:
            image = _image(entry)
        except ValueError as e:
            problems.append(f"images[{i}]: {e}")
            continue
        if image.id in image_ids:
            problems.append(f"images[{i}]: id {image.id!r} used twice")
            continue
        image_ids.add(image.id)
        images.append(image)
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError(f"{path}: 'annotations' is not a list")
    boxes = []
    for i, entry in enumerate(annotations):
        try:
            boxes.append(_box(i, entry))
        except ValueError as e:
            problems.append(f"annotations[{i}]: {e}")
    return CocoFile(images, boxes, categories, problems)


def _parse_int(literal: str) -> int | float:
    """An integer literal of the JSON; a huge one becomes a float (so one entry fails, not
    the file: Python refuses to parse integers of over 4300 digits)."""
    return int(literal) if len(literal) <= MAX_INT_DIGITS else float(literal)


def _categories(path: Path, entries: object) -> list[tuple[int, str]]:
    if not isinstance(entries, list):
        raise DataError(f"{path}: no 'categories' list")
    found: dict[int, str] = {}
    for i, entry in enumerate(entries):
        cid = entry.get("id") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if not _is_int(cid) or not isinstance(name, str):
            raise DataError(f"{path}: categories[{i}] needs an integer 'id' and a 'name'")
        if cid in found:
            raise DataError(f"{path}: categories[{i}]: id {cid} used twice")
        found[cid] = name
    check_class_names(list(found.values()), path, lambda i: f"categories[{i}]")
    return sorted(found.items())


def _image(entry: object) -> CocoImage:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    image_id, name = entry.get("id"), entry.get("file_name")
    if not (_is_int(image_id) or isinstance(image_id, str)):
        raise ValueError("no integer or string 'id'")
    if not isinstance(name, str) or not name or "\0" in name:
        raise ValueError("no 'file_name'")
    h, w = entry.get("height"), entry.get("width")
    size = (h, w) if _is_int(h) and _is_int(w) and h > 0 and w > 0 else None
    return CocoImage(image_id, name, size)


def _box(index: int, entry: object) -> CocoBox:
    if not isinstance(entry, dict):
        raise ValueError("not an object")
    image_id, category_id, bbox = entry.get("image_id"), entry.get("category_id"), entry.get("bbox")
    if not (_is_int(image_id) or isinstance(image_id, str)):
        raise ValueError("no integer or string 'image_id'")
    if not _is_int(category_id):
        raise ValueError("no integer 'category_id'")
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise ValueError("'bbox' is not a list [x, y, width, height]")
    if any(isinstance(v, (str, bool)) for v in bbox):
        raise ValueError(f"'bbox' {bbox} does not hold 4 numbers")
    x, y, w, h = (finite_float(v) for v in bbox)
    try:
        iscrowd, difficult = read_flag(entry.get("iscrowd")), read_flag(entry.get("difficult"))
    except ValueError as e:
        raise ValueError(f"'iscrowd' or 'difficult': {e}") from None
    return CocoBox(index, image_id, category_id, (x, y, x + w, y + h), iscrowd, difficult)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def is_coco(root: Path) -> bool:
    folder = Path(root) / "annotations"
    return folder.is_dir() and any(folder.glob("instances_*.json"))


def coco_splits(root: Path) -> dict[str, Path]:
    """Split name -> its annotation file, for the splits present (train, val, test)."""
    found = {}
    for split in SPLITS:
        matches = _annotation_files(Path(root), split)
        if matches:
            found[split] = matches[0]
    return found


def _annotation_files(root: Path, split: str) -> list[Path]:
    folder = root / "annotations"
    exact = folder / f"instances_{split}.json"
    if exact.is_file():
        return [exact]
    return sorted(p for p in folder.glob(f"instances_{split}*.json") if p.is_file())


def annotation_file(root: Path, split: str) -> Path:
    """``annotations/instances_{split}.json``, else the single ``instances_{split}*.json``."""
    matches = _annotation_files(Path(root), split)
    if not matches:
        raise DataError(f"{Path(root) / 'annotations'}/instances_{split}*.json: not found")
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches)
        raise DataError(f"{matches[0].parent}: several files for split {split!r}: {names}")
    return matches[0]


def image_folder(root: Path, split: str, json_path: Path, file_names: list[str]) -> Path:
    """The candidate folder (module docstring) holding most of the first PROBE images."""
    tag = json_path.stem.removeprefix("instances_")
    candidates = [root / "images" / tag, root / tag]
    candidates += sorted(root.glob(f"images/{split}*")) + sorted(root.glob(f"{split}*"))
    candidates += [root / "images", root]
    folders = list(dict.fromkeys(c for c in candidates if c.is_dir()))
    probe = file_names[:PROBE]
    hits = [sum(is_file(folder / name) for name in probe) for folder in folders]
    return folders[hits.index(max(hits))] if folders else root / "images"


def read_coco(
    root: str | Path,
    split: str = "train",
    report: Report | None = None,
    limits: DataLimits | None = None,
) -> Split:
    """Read one split of a COCO data set.

    Unusable entries (see :func:`parse_coco_json`) are reported and skipped;
    images listed without any annotation are kept as negatives (reported);
    images missing on disk and annotations of unknown images are reported and
    skipped; boxes with an unknown category or no area are dropped (reported),
    and so are boxes over the per-image limit (see :mod:`.rules`). A
    ``file_name`` that resolves outside ROOT (absolute, ``..``, a symlink out)
    or names a FIFO or device is skipped (reported), and so is an image entry
    whose ``file_name`` names a file listed already, with its boxes. Boxes
    annotated before the image's EXIF rotation are turned with it (see
    :mod:`.exif`). Category names holding a newline or a comma are kept and
    reported (some outputs cannot hold them).

    Raises:
        DataError: the file cannot be read, or its categories cannot (see
            :func:`parse_coco_json`: two named alike, or one not named).
    """
    root = Path(root)
    report = report if report is not None else Report()
    json_path = annotation_file(root, split)
    coco = parse_coco_json(json_path)
    for entry_problem in coco.problems:
        report.add(BAD_LABEL_FILE, json_path, entry_problem)
    folder = image_folder(root, split, json_path, [im.file_name for im in coco.images])
    by_image = defaultdict(list)
    known = {im.id for im in coco.images}
    for b in coco.boxes:
        if b.image_id in known:
            by_image[b.image_id].append(b)
        else:
            where = f"annotations[{b.index}]: image_id {b.image_id!r} is not in 'images'"
            report.add(MISSING_IMAGE, json_path, where)
    for cid, name in coco.categories:
        caveat = class_name_caveat(name)
        if caveat:
            report.add(CLASS_NAME, json_path, f"category {cid} {name!r}: {caveat}")
    note = f"listed in {json_path.name}"
    roots = [root, folder]  # a linked images/ folder is ours
    items = [
        Item(folder / im.file_name, (im, by_image[im.id]), note=note)
        for im in _first_per_file(coco.images, folder, json_path, by_image, report, roots)
    ]
    labels = {cid: i + 1 for i, (cid, _) in enumerate(coco.categories)}
    parse = partial(parse_coco_item, labels=labels, json_path=json_path)
    records = read_records(items, parse, len(labels), roots, report, limits, exif_frame=True)
    return Split(records, [name for _, name in coco.categories], root)


def _first_per_file(
    images: list[CocoImage],
    folder: Path,
    json_path: Path,
    boxes: dict[int | str, list[CocoBox]],
    report: Report,
    roots: list[Path],
) -> list[CocoImage]:
    """``images`` without the entries whose ``file_name`` names a file listed already
    (``a.png``, ``./a.png``): each is reported, and skipped with its boxes, since the
    file cannot be two images with two sets of boxes. A file outside ``roots`` is left
    to the reader, which skips and reports every entry naming it."""
    first: dict[str, CocoImage] = {}
    kept = []
    for im in images:
        key = os.path.normpath(folder / im.file_name)
        if key in first and image_problem(key, roots) is None:
            report.add(
                DUPLICATE_IMAGE,
                json_path,
                f"image id {im.id!r}: file_name {im.file_name!r} is listed already as image "
                f"id {first[key].id!r}; skipped with its {len(boxes[im.id])} box(es)",
            )
            continue
        first[key] = im
        kept.append(im)
    return kept


def parse_coco_item(
    item: Item, size: ImageSize | None = None, *, labels: dict[int, int], json_path: Path
) -> Annotation:
    """The boxes of one image: ``item.labels`` is its (CocoImage, [CocoBox]).

    ``labels`` maps category ids to labels 1..C.

    Raises:
        Skip: the listed image is missing.
    """
    image, boxes = item.labels
    if not is_file(cast(Path, item.image)):
        raise Skip(MISSING_IMAGE, cast(Path, item.image), item.note)

    def describe(i: int, kind: str) -> tuple[str, str]:
        b = boxes[i]
        if kind == UNKNOWN_CLASS:
            return str(json_path), f"annotations[{b.index}]: category_id {b.category_id}"
        return str(json_path), f"annotations[{b.index}]: bbox has no area"

    return Annotation(
        [b.box for b in boxes],
        [labels.get(b.category_id, 0) for b in boxes],
        describe,
        [b.difficult for b in boxes],
        [b.iscrowd for b in boxes],
        image.size,
    )


def write_coco(root: str | Path, split: str, records: list[Record], classes: list[str]) -> Path:
    """Write ``annotations/instances_{split}.json`` and the images under ``images/{split}/``.

    Images are hard-linked (or copied), keeping their names unless the stem
    is taken (then prefixed with the split). Categories are 1..C in class
    order; difficult boxes carry ``"difficult": 1``.
    """
    root = Path(root)
    images_dir, json_dir = root / "images" / split, root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    json_dir.mkdir(parents=True, exist_ok=True)
    taken = {p.stem for p in images_dir.iterdir()}
    images: list[dict[str, object]] = []
    annotations: list[dict[str, object]] = []
    for image_id, rec in enumerate(records, start=1):
        name = free_stem(rec.image.stem, split, taken) + rec.image.suffix
        link_or_copy(rec.image, images_dir / name)
        h, w = rec.size or image_size(rec.image)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        flags = zip(rec.difficult.tolist(), rec.iscrowd.tolist())
        for label, (x1, y1, x2, y2), (difficult, crowd) in zip(
            rec.labels.tolist(), rec.boxes.tolist(), flags
        ):
            box = [tidy_number(v) for v in (x1, y1, x2 - x1, y2 - y1)]
            entry = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label,
                "bbox": box,
                "area": tidy_number(box[2] * box[3]),
                "iscrowd": int(crowd),
            }
            if difficult:
                entry["difficult"] = 1
            annotations.append(entry)
    categories = [{"id": i, "name": name} for i, name in enumerate(classes, start=1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (json_dir / f"instances_{split}.json").write_text(json.dumps(data))
    return root
