"""``tinyssd data check DIR``: read every split, decode every image, report each problem.

    $ tinyssd data check data/pets --first 5
    $ tinyssd data check data/pets --model tiny_fpn --plots   # + labels.png, anchors_N.png

reads the train, val and test splits present in the folder's layout, decodes
every image (so truncated files are found), clips the boxes to the image,
looks for images read by two splits, and prints, per problem kind, its count
and the first few places. Kinds in ``base.ERRORS`` (a split that cannot be
read, an image in two splits, an image listed twice, one annotation with two
images) are errors: :meth:`CheckReport.exit_code` is 2 where there is one,
else 0 (what readers skip, drop, clip or keep is counted, not an error).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import UsageError
from . import FORMATS, load_split, resolve_format
from .base import (
    BAD_SPLIT,
    SPLIT_LEAK,
    DataError,
    Record,
    Report,
    Split,
    clip_to_image,
    escape_control,
    read_image,
)
from .base import image_size as header_size
from .dataset import normalised_boxes
from .limits import DataLimits

if TYPE_CHECKING:
    from ..models.anchor_fit import AnchorFit

WORKERS = min(4, os.cpu_count() or 1)  # threads: PIL decodes without holding the GIL


class SplitCheck(NamedTuple):
    images: int  # images that decode
    boxes: int  # their boxes after clipping
    same_as: str | None = None  # the split read from the same files, if any


@dataclass
class CheckReport(Report):
    """A :class:`Report` that also says what was checked."""

    format: str = ""
    root: Path | None = None
    splits: dict[str, SplitCheck] = field(default_factory=dict)

    def summary(self, first: int = 3) -> str:
        """The folder, its layout, images and boxes per split, then the problems."""
        lines = [escape_control(f"{self.root}: {self.format} layout")]
        for name, s in self.splits.items():
            if s.same_as:
                lines.append(f"  {name}: the same files as {s.same_as}")
            else:
                lines.append(f"  {name}: {s.images} usable images, {s.boxes} boxes")
        return "\n".join([*lines, super().summary(first)])

    def exit_code(self) -> int:
        """2 if a problem is an error (``base.ERRORS``), else 0."""
        return 2 if self.errors() else 0

    def raise_for_errors(self) -> None:
        """Raise a one-line DataError when :meth:`exit_code` is 2 (the CLI then exits 2)."""
        if self.errors():
            raise DataError(
                f"{self.root}: {self.errors()} error(s) listed above (data that training "
                "would refuse or misread)"
            )


def check_dataset(
    root: str | Path, format: str = "auto", limits: DataLimits | None = None
) -> CheckReport:
    """Check every split present at ``root``, with ``limits`` (None: ``DataLimits.from_env()``).

    A split that cannot be read at all (say a corrupt COCO JSON) is reported
    as such and the others are still checked. Splits read from the same files
    (a flat VOC folder is both train and val) are checked once.

    Raises:
        DataError: no such folder, or no known layout in it.
    """
    root = Path(root)
    limits = limits or DataLimits.from_env()
    name = resolve_format(root, format)
    fmt = FORMATS[name]
    report = CheckReport(format=name, root=root)
    sources = fmt.splits(root)
    read_from: dict[Path, str] = {}
    read: dict[str, Split] = {}
    for split, source in sources.items():
        if source in read_from:
            report.splits[split] = SplitCheck(0, 0, same_as=read_from[source])
            continue
        read_from[source] = split
        try:
            read[split] = fmt.read(root, split, report, limits)
        except DataError as e:
            report.add(BAD_SPLIT, str(e))
            continue
        report.splits[split] = check_images(read[split], report, limits)
    report_split_leaks(read, sources, report)
    if not report.splits and not report:
        raise DataError(f"{root}: no train, val or test split found in its {name} layout")
    return report


def report_split_leaks(splits: dict[str, Split], sources: dict[str, Path], report: Report) -> None:
    """Report each image file that two of ``splits`` read (by its device and inode, so a
    link or another path to the same file counts): val or test then hold training images.

    ``sources``: split name -> the list file or folder it is read from, for the message.
    """
    first: dict[tuple[int, int], str] = {}
    for name, data in splits.items():
        for image in dict.fromkeys(rec.image for rec in data.records):
            try:
                st = os.stat(image)
            except OSError:
                continue  # reported as unreadable
            split = first.setdefault((st.st_dev, st.st_ino), name)
            if split != name:
                detail = f"read by {split} ({sources[split]}) and by {name} ({sources[name]})"
                report.add(SPLIT_LEAK, image, detail)


def check_images(data: Split, report: Report, limits: DataLimits | None = None) -> SplitCheck:
    """Decode every image of the split and clip its boxes, reporting what fails."""
    decode = partial(_decoded_size, limits=limits or DataLimits.from_env())
    with ThreadPoolExecutor(WORKERS) as pool:
        sizes = list(pool.map(decode, [rec.image for rec in data.records]))
    images = boxes = 0
    for rec, size in zip(data.records, sizes):
        if isinstance(size, DataError):
            report.add_unreadable(rec.image, size)
            continue
        images += 1
        boxes += len(clip_to_image(rec, size, report).labels)
    return SplitCheck(images, boxes)


def _decoded_size(path: Path, limits: DataLimits) -> tuple[int, int] | DataError:
    """(height, width) of the fully decoded image, or the error that decoding raised."""
    try:
        h, w = read_image(path, limits).shape[-2:]
        return int(h), int(w)
    except DataError as e:
        return e


def fit_model_anchors(
    root: str | Path,
    format: str,
    model: str,
    image_size: int | None = None,
    limits: DataLimits | None = None,
) -> AnchorFit:
    """``--anchors auto`` for ``model`` on the train split at ``root``: the fit training makes."""
    from ..config import check_image_size
    from ..models import PRESETS
    from ..models.anchor_fit import fit_for_data

    if model not in PRESETS:
        raise UsageError(f"--model {model!r}: choose from {', '.join(PRESETS)}")
    check_image_size(model, image_size)
    config = PRESETS[model]()
    config = replace(config, image_size=image_size or config.image_size)
    return fit_for_data(config, normalised_boxes(load_split(root, "train", format, limits=limits)))


def anchor_fit_summary(
    root: str | Path,
    format: str,
    model: str,
    image_size: int | None = None,
    limits: DataLimits | None = None,
) -> str:
    """How well a model's anchors fit the training boxes, before and after ``--anchors auto``."""
    fit = fit_model_anchors(root, format, model, image_size, limits)
    if fit.boxes < 2:
        return f"anchors of {model}: fewer than 2 training boxes to fit"
    if fit.kept_preset:
        chosen = f"{100 * fit.before:.1f}% (keeps the preset's: fitted, {100 * fit.after:.1f}%)"
    else:
        chosen = f"{100 * fit.after:.1f}%"
    return (
        f"anchors of {model} at {fit.config.image_size} px: {100 * fit.before:.1f}% of "
        f"{fit.boxes} training boxes have no anchor with IoU >= 0.5; fitted to the data "
        f"(--anchors auto): {chosen}"
    )


def write_check_plots(
    root: str | Path,
    format: str = "auto",
    model: str | None = None,
    image_size: int | None = None,
    limits: DataLimits | None = None,
    out: str | Path | None = None,
    images: int = 4,
) -> list[Path]:
    """``tinyssd data check DIR --plots``: ``labels.png`` of the training boxes and, with
    ``model``, ``anchors_1.png``, ... for the first ``images`` training images with boxes:
    each level's anchors and those matched to each box (the anchors ``--anchors auto``
    fits, matched as training does, IoU 0.5). Written into ``out`` (None: the first free
    ``runs/check``, ``runs/check2``, ...); returns the paths."""
    from ..engine.run_folder import new_run_dir
    from ..viz import write_labels_picture

    limits = limits or DataLimits.from_env()
    split = load_split(root, "train", format, limits=limits)
    folder = Path(out) if out is not None else new_run_dir("runs", "check")
    folder.mkdir(parents=True, exist_ok=True)
    sized = []  # (record, (height, width)) of the images whose header reads
    for rec in split.records:
        try:
            sized.append((rec, rec.size or header_size(rec.image, limits)))
        except DataError:
            continue
    written = [write_labels_picture(sized, split.classes, folder / "labels.png")]
    if model:
        with_boxes = [(r, size) for r, size in sized if len(r.boxes)][:images]
        written += _anchor_plots(root, format, model, image_size, limits, with_boxes, split, folder)
    return written


def _anchor_plots(
    root: str | Path,
    format: str,
    model: str,
    image_size: int | None,
    limits: DataLimits,
    records: list[tuple[Record, tuple[int, int]]],
    split: Split,
    folder: Path,
) -> list[Path]:
    """``anchors_N.png`` of ``records``: see :func:`write_check_plots`."""
    import torch

    from ..anchors import AnchorGenerator
    from ..boxes import box_iou, normalise_boxes
    from ..files import atomic_path
    from ..matching import match_anchors
    from ..models.anchor_fit import feature_shapes
    from ..viz import plot_anchor_matches

    config = fit_model_anchors(root, format, model, image_size, limits).config
    shapes = feature_shapes(config, config.image_size)
    generator = AnchorGenerator(
        config.sizes, config.ratios, config.anchor_steps, config.clip_anchors
    )
    per_cell = generator.num_anchors_per_cell()
    counts = [h * w * a for (h, w), a in zip(shapes, per_cell, strict=True)]
    anchors = generator(shapes, "cpu")  # (A, 4), the levels one after the other
    levels = list(anchors.split(counts))
    written = []
    for i, (rec, size) in enumerate(records, start=1):
        gt = normalise_boxes(rec.boxes, size).clamp(0, 1)
        matched = match_anchors(anchors, gt[None], torch.ones(1, len(gt), dtype=torch.bool))[0]
        best_iou = box_iou(gt, anchors).amax(dim=1)
        path = folder / f"anchors_{i}.png"
        title = (
            f"{rec.image.name}: {model} at {config.image_size} px, anchors as --anchors auto "
            "fits them, matched at IoU 0.5 as in training"
        )
        with atomic_path(path) as tmp:
            plot_anchor_matches(
                read_image(rec.image, limits),
                gt,
                rec.labels,
                levels,
                matched,
                split.classes,
                tmp,
                best_iou=best_iou,
                title=title,
            )
        written.append(path)
    return written
