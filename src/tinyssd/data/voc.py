"""Pascal VOC: one XML file per image, boxes in 1-based inclusive pixels.

Layouts, in the order they are looked for:

- ``Annotations/ID.xml`` + ``JPEGImages/ID.<any image suffix>`` +
  ``ImageSets/Main/{split}.txt`` (one ID per line). Without ``ImageSets/Main``
  every annotation belongs to every split.
- A flat folder of images with ``NAME.xml`` beside ``NAME.jpg``. Split ``s``
  reads ``ROOT/s/`` if that folder exists, else ROOT itself, for any split:
  a single flat folder is then both the train and the val split (make
  ``train/`` and ``val/`` folders to separate them).

Boxes: VOC's ``xmin ymin xmax ymax`` number pixels from 1 and include the
last one; records are 0-based with x2/y2 exclusive, so ``x1 = xmin - 1``,
``y1 = ymin - 1``, ``x2 = xmax``, ``y2 = ymax`` (as MMDetection and
Detectron2 read VOC); :func:`write_voc` inverts it exactly. ``difficult`` is
kept. Class names: ``classes.txt`` or ``labels.txt`` at the root (one per
line, in label order) if present, else the sorted names seen in all
annotations of the data set.

An XML file that is not UTF-8 where no class is named (a Latin-1
``<filename>`` of an image whose name is not UTF-8) is read, its odd bytes as
U+FFFD.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import partial
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from .base import (
    AMBIGUOUS_IMAGE,
    IMAGE_SUFFIXES,
    UNKNOWN_CLASS,
    DataError,
    Record,
    Report,
    Split,
    check_listable,
    check_regular_file,
    image_size,
    is_file,
    link_or_copy,
    read_names,
    read_text,
)
from .limits import DataLimits
from .reader import Annotation, ImageSize, Item, read_records
from .rules import check_class_names, is_special
from .values import finite_float, free_stem, natural_key, read_flag, tidy_number

SPLITS = ("train", "val", "test")
NAMES_FILES = ("classes.txt", "labels.txt")


class VocAnnotation(NamedTuple):
    """What one VOC XML file says about its image.

    Attributes:
        boxes (Tensor[M, 4] float32): xyxy pixels, 0-based, x2/y2 exclusive.
        names: class name of each box.
        difficult (Tensor[M] bool): the ``<difficult>`` flags.
        size: (height, width) from ``<size>``, or None if absent or not positive.
    """

    boxes: Tensor
    names: list[str]
    difficult: Tensor
    size: tuple[int, int] | None


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Read one VOC annotation file.

    Example: ``<xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax>``
    gives the box ``[0, 1, 10, 20]``. Boxes are returned as written, even
    empty ones (x1 >= x2): the reader decides what to drop.

    Raises:
        DataError: unreadable file, invalid XML, an ``<object>`` without a
            name or without four finite coordinates.
    """
    path = Path(path)
    try:
        check_regular_file(path)
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    root = _parse_xml(path, data)
    if root.tag != "annotation":
        raise DataError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    boxes, names, difficult = [], [], []
    for i, obj in enumerate(root.findall("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {i} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataError(f"{path}: object {i} ({name!r}) has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                finite_float(bndbox.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DataError(
                f"{path}: object {i} ({name!r}): <bndbox> needs numbers xmin, ymin, xmax, ymax"
            ) from None
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append(name)
        try:
            difficult.append(read_flag(obj.findtext("difficult")))
        except ValueError as e:
            raise DataError(f"{path}: object {i} ({name!r}): <difficult> {e}") from None
    return VocAnnotation(
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        names,
        torch.tensor(difficult, dtype=torch.bool),
        _size(root),
    )


def _parse_xml(path: Path, data: bytes) -> ET.Element:
    """The XML element tree of ``data``, the bytes of ``path``.

    Bytes that are not UTF-8 in a file that declares no other encoding (the
    Latin-1 ``<filename>`` of an image whose name is not UTF-8) are read as
    U+FFFD, so that the file and its image stay usable; such a byte in an
    object's ``<name>`` is an error (the class would be guessed).
    """
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        error = DataError(f"{path}:{e.position[0]}: not valid XML ({e})")
    except (ValueError, LookupError) as e:  # e.g. an unknown encoding in the declaration
        raise DataError(f"{path}: not valid XML ({e})") from None
    text = data.decode("utf-8", "replace")
    if "\ufffd" not in text:  # valid UTF-8 (or another encoding): the error stands
        raise error
    try:
        root = ET.fromstring(text)
    except (ET.ParseError, ValueError, LookupError):
        raise error from None
    for i, obj in enumerate(root.findall("object"), start=1):
        if "\ufffd" in (obj.findtext("name") or ""):
            raise DataError(f"{path}: object {i}: <name> is not UTF-8 text")
    return root


def _size(root: ET.Element) -> tuple[int, int] | None:
    try:
        h, w = (int(root.findtext(f"size/{k}") or "0") for k in ("height", "width"))
    except ValueError:
        return None
    return (h, w) if h > 0 and w > 0 else None


def is_voc(root: Path) -> bool:
    root = Path(root)
    folders = [root / "Annotations", root, *(root / s for s in SPLITS)]
    return any(folder.is_dir() and any(folder.glob("*.xml")) for folder in folders)


def voc_splits(root: Path) -> dict[str, Path]:
    """Split name -> the list file or folder it is read from (train, val, test if present)."""
    root = Path(root)
    annotations, main = root / "Annotations", root / "ImageSets" / "Main"
    if annotations.is_dir() and main.is_dir():
        return {s: main / f"{s}.txt" for s in SPLITS if (main / f"{s}.txt").is_file()}
    if annotations.is_dir():
        return {"train": annotations, "val": annotations}
    found = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if any(root.glob("*.xml")):
        found = {"train": root, "val": root, **found}
    return found


def read_voc(
    root: str | Path,
    split: str = "train",
    report: Report | None = None,
    limits: DataLimits | None = None,
) -> Split:
    """Read one split of a VOC data set (either layout, see the module docstring).

    An image without an XML file, or whose XML has no object, is kept as a
    negative (reported); an XML or listed ID without an image is reported and
    skipped; an unparsable XML is reported and its image skipped (its boxes
    are unknown). Objects with an unknown class or an empty box are dropped
    (reported), and so are boxes over the per-image limit (see :mod:`.rules`).
    Images that resolve outside ROOT, and FIFOs or devices, are skipped
    (reported). An XML with several images (``0.jpg`` and ``0.png``) is read
    with the first in name order, the others reported and skipped. Boxes
    annotated before the image's EXIF rotation are turned with it (see
    :mod:`.exif`). Class names must be distinct (``classes.txt``).

    Raises:
        DataError: a split list or folder that cannot be read, no class names.
    """
    root = Path(root)
    report = report if report is not None else Report()
    folder, pairs, ambiguous = _pairs(root, split)
    classes = voc_classes(root)
    if not classes:
        raise DataError(f"{root}: no object in any annotation and no classes.txt to name classes")
    for xml, used, others in ambiguous:
        for image in others:
            report.add(AMBIGUOUS_IMAGE, image, f"{xml.name} is read with {used.name}; rename one")
    items = [
        Item(image, xml)
        if image is not None
        else Item(None, where=xml or folder / image_id, note="no image with this name")
        for image_id, image, xml in pairs
    ]
    parse = partial(parse_voc_item, classes=classes)
    records = read_records(
        items, parse, len(classes), [root], report, limits, follow_symlinks=False, exif_frame=True
    )
    return Split(records, classes, root)


def parse_voc_item(item: Item, size: ImageSize | None = None, *, classes: list[str]) -> Annotation:
    """The boxes of one image's XML file (``item.labels``; None: no XML, a negative)."""
    xml = item.labels
    if xml is None:
        return Annotation([], [])
    ann = parse_voc_xml(xml)

    def describe(i: int, kind: str) -> tuple[str, str]:
        if kind == UNKNOWN_CLASS:
            return str(xml), f"object {i + 1}: class {ann.names[i]!r}"
        return str(xml), f"object {i + 1}: {_voc_box(ann.boxes[i].tolist())} is empty"

    label_of = {name: i + 1 for i, name in enumerate(classes)}
    labels = [label_of.get(name, 0) for name in ann.names]
    return Annotation(
        ann.boxes, labels, describe, ann.difficult, size=ann.size, empty=f"{xml.name} has no object"
    )


def voc_classes(root: Path) -> list[str]:
    """Class names from ``classes.txt``/``labels.txt``, else the sorted names seen."""
    for name in NAMES_FILES:
        if (Path(root) / name).is_file():
            return check_class_names(read_names(Path(root) / name), Path(root) / name)
    seen = set()
    for xml in _all_xml(Path(root)):
        try:
            seen.update(parse_voc_xml(xml).names)
        except DataError:
            continue  # reported when its split is read
    return sorted(seen)


def _all_xml(root: Path) -> list[Path]:
    if (root / "Annotations").is_dir():
        return sorted((root / "Annotations").glob("*.xml"))
    folders = [root, *(root / s for s in SPLITS if (root / s).is_dir())]
    return sorted(p for f in folders for p in f.glob("*.xml"))


_Pair = tuple[str, Path | None, Path | None]  # (ID, its image or None, its XML or None)


def _pairs(root: Path, split: str) -> tuple[Path, list[_Pair], list[tuple[Path, Path, list[Path]]]]:
    """The split's image folder, its pairs in order, and the IDs with an XML and several
    images (``0.jpg``, ``0.png``): (XML, the image read with it, the others, skipped).

    Images of one ID without an XML are each a negative of their own.

    Raises:
        DataError: a folder to read cannot be listed (its permissions).
    """
    annotations = root / "Annotations"
    if annotations.is_dir():
        folder, main = root / "JPEGImages", root / "ImageSets" / "Main"
        check_listable(annotations)
        images = _by_stem(folder)
        if main.is_dir():
            ids = _read_ids(main / f"{split}.txt")
        else:
            ids = sorted({p.stem for p in annotations.glob("*.xml")} | set(images), key=natural_key)
        xmls = {i: annotations / f"{i}.xml" for i in ids}
        found = {i: xmls[i] for i in ids if _is_label(xmls[i])}
    else:
        folder = root / split if (root / split).is_dir() else root
        images = _by_stem(folder)
        found = {p.stem: p for p in folder.glob("*.xml") if _is_label(p)}
        ids = sorted(set(images) | set(found), key=natural_key)
    pairs: list[_Pair] = []
    ambiguous = []
    for i in ids:
        xml, candidates = found.get(i), images.get(i, [])
        if xml is None and len(candidates) > 1:
            pairs += [(i, image, None) for image in candidates]
            continue
        pairs.append((i, candidates[0] if candidates else None, xml))
        if xml is not None and len(candidates) > 1:
            ambiguous.append((xml, candidates[0], candidates[1:]))
    return folder, pairs, ambiguous


def _is_label(path: Path) -> bool:
    """A file or a special file (which the parser then refuses, reported), not a folder."""
    return is_file(path) or is_special(path)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [line.split()[0] for line in read_text(path).splitlines() if line.strip()]


def _by_stem(folder: Path) -> dict[str, list[Path]]:
    """Image files of ``folder`` by stem, in name order (``0.jpg`` and ``0.png`` share one).

    FIFOs and devices are listed too, for the reader to report them.

    Raises:
        DataError: ``folder`` cannot be listed.
    """
    if not folder.is_dir():
        return {}
    check_listable(folder)
    images: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES and (p.is_file() or is_special(p)):
            images.setdefault(p.stem, []).append(p)
    return images


def _voc_box(box: list[float]) -> str:
    x1, y1, x2, y2 = box
    xmin, ymin, xmax, ymax = (tidy_number(v) for v in (x1 + 1, y1 + 1, x2, y2))
    return f"xmin {xmin} ymin {ymin} xmax {xmax} ymax {ymax}"


def write_voc(root: str | Path, split: str, records: list[Record], classes: list[str]) -> Path:
    """Write one split in the ``Annotations/`` + ``JPEGImages/`` + ``ImageSets/Main/`` layout.

    Images are hard-linked (or copied) into ``JPEGImages/``, keeping their
    names unless the stem is taken (then prefixed with the split, as images of
    all splits share the folder). ``classes.txt`` keeps the class order.
    Crowd regions become difficult objects, the VOC way to have them ignored.
    Boxes are written as ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``.
    """
    root = Path(root)
    images, annotations, main = root / "JPEGImages", root / "Annotations", root / "ImageSets/Main"
    for folder in (images, annotations, main):
        folder.mkdir(parents=True, exist_ok=True)
    taken = {p.stem for p in images.iterdir()} | {p.stem for p in annotations.iterdir()}
    ids = []
    for rec in records:
        stem = free_stem(rec.image.stem, split, taken)
        link_or_copy(rec.image, images / f"{stem}{rec.image.suffix}")
        size = rec.size or image_size(rec.image)
        xml = voc_xml(f"{stem}{rec.image.suffix}", size, rec, classes)
        (annotations / f"{stem}.xml").write_text(xml, encoding="utf-8")
        ids.append(stem)
    (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
    (root / "classes.txt").write_text("".join(f"{n}\n" for n in classes), encoding="utf-8")
    return root


def voc_xml(filename: str, size: tuple[int, int], record: Record, classes: list[str]) -> str:
    """The VOC annotation of one record; ``size`` is (height, width)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size_el = ET.SubElement(ann, "size")
    for tag, value in (("width", size[1]), ("height", size[0]), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(ann, "segmented").text = "0"
    flags = (record.difficult | record.iscrowd).tolist()
    for label, box, difficult in zip(record.labels.tolist(), record.boxes.tolist(), flags):
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = classes[label - 1]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = box
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = str(tidy_number(value))
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"
