"""What training reads: the splits, the model's anchors fitted to them, the datasets, batches.

splits = read_splits(cfg)                       # records only, no pixels yet
config = model_config(cfg, splits.train)        # preset, image size, --anchors auto
train_ds, val_ds = make_datasets(cfg, splits, config)    # --cache ram / disk / none / auto
sampler = GlobalBatchSampler(len(train_ds), 32, seed, rank, world_size)
sampler.set_epoch(epoch)
for images, labels in read_batches(train_ds, sampler, workers, stacked=stack_dataset(train_ds)):
    ...
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor

from ..config import TrainConfig, resolved_value
from ..data import DetectionDataset, Report, Split, collate, load_split
from ..data.base import UNREADABLE_IMAGE
from ..data.base import image_size as header_size
from ..errors import DataError
from ..models import PRESETS, SSDConfig
from ..models.anchor_fit import fit_anchors, miss_rate
from .distributed import GlobalBatchSampler

log = logging.getLogger("tinyssd")

# Training boxes the anchor fit looks at, at most: a seeded sample of a larger set.
FIT_BOXES = 4000


class Splits(NamedTuple):
    root: str
    train: Split
    val: Split
    report: Report


def read_splits(cfg: TrainConfig) -> Splits:
    """The train and val records (val relabelled to train's classes); no image decoded."""
    root = cfg.data
    if root is None:
        from ..data.synthetic import ensure_synthetic

        root = str(ensure_synthetic())
        log.info("no --data given: training on the built-in synthetic data set at %s", root)
    report = Report()
    train = load_split(root, "train", cfg.format, report)
    val = load_split(root, "val", cfg.format, report).with_classes(train.classes)
    return Splits(root, train, val, report)


def normalised_boxes(split: Split) -> Tensor:
    """Every box of ``split`` as normalised xyxy ``Tensor[N, 4]`` (sizes from image headers)."""
    out = []
    for rec in split.records:
        if not len(rec.boxes):
            continue
        try:
            h, w = rec.size or header_size(rec.image)
        except DataError:
            continue  # unreadable: reported when the dataset decodes it
        out.append((rec.boxes / rec.boxes.new_tensor([w, h, w, h])).clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, 4)


def model_config(cfg: TrainConfig, train: Split) -> SSDConfig:
    """The network's config: the preset, ``--image-size``, anchors fitted with ``--anchors auto``.

    Logs the share of training boxes no anchor matches at IoU 0.5, before and after
    fitting, and keeps the preset's anchors where they match more boxes (as YOLO's
    AutoAnchor keeps its defaults when they fit well enough).
    """
    config = PRESETS[resolved_value(cfg.model)]()
    config = replace(config, image_size=cfg.image_size or config.image_size)
    if cfg.anchors != "auto":
        return config
    boxes = normalised_boxes(train)
    if len(boxes) > FIT_BOXES:  # a seeded sample: quantiles need no more, memory stays flat
        pick = torch.randperm(len(boxes), generator=torch.Generator().manual_seed(0))
        boxes = boxes[pick[:FIT_BOXES]]
    if len(boxes) < 2:
        log.info("--anchors auto: fewer than 2 training boxes, keeping the preset's anchors")
        return config
    fitted = fit_anchors(config, boxes[:, 2:] - boxes[:, :2])
    before, after = miss_rate(config, boxes), miss_rate(fitted, boxes)
    log.info(
        "anchors fitted to %d training boxes: boxes no anchor matches (IoU < 0.5) "
        "%.1f%% -> %.1f%%%s",
        len(boxes),
        100 * before,
        100 * after,
        "" if after <= before else "; keeping the preset's, which match more",
    )
    return fitted if after <= before else config


def make_datasets(
    cfg: TrainConfig, splits: Splits, config: SSDConfig
) -> tuple[DetectionDataset, DetectionDataset]:
    """The datasets of the splits (train with its augmentation), their images held as
    ``--cache`` says; log what was skipped."""
    size = config.image_size
    transform = make_transform(cfg.augment or "none", size, min(min(s) for s in config.sizes))
    cache = cfg.cache or "auto"
    train_ds = DetectionDataset(splits.train, size, transform, splits.report, cache=cache)
    val_ds = DetectionDataset(splits.val, size, None, splits.report, cache=cache)
    if splits.report:
        log.info("data check for %s:\n%s", splits.root, splits.report.summary())
    if len(train_ds) == 0:
        raise DataError(f"{splits.root}: no usable training images")
    if len(val_ds) == 0:
        log.warning(
            "warning: %s has no usable val images: no val AP; best.safetensors = last",
            splits.root,
        )
    return train_ds, val_ds


def make_transform(spec: str, image_size: int, min_anchor: float):
    """The per-image augmentation of ``--augment``, or None (none, or flip alone: done on
    whole batches by ``batches``).

    ``ssd`` or a list of photometric,expand,crop,flip: the SSD paper's parts;
    ``bounded`` or ``bounded:PARTS``: the same parts bounded by the anchors (a
    zoom-out never shrinks a box below what the smallest anchor matches, a crop
    keeps box centres).
    """
    from ..data.transforms import AnchorBoundedAugment, parse_augment, train_transform

    bounded = spec == "bounded" or spec.startswith("bounded:")
    parts = parse_augment(spec.partition(":")[2] or "ssd") if bounded else parse_augment(spec)
    if not any(parts.values()) or (not bounded and flips_whole_batches(spec)):
        return None
    if bounded:
        return AnchorBoundedAugment(image_size, min_anchor, **parts)
    return train_transform(image_size, **parts)


def flips_whole_batches(spec: str | None) -> bool:
    """``--augment flip``: the one part that works on stacked batches (no per-image work)."""
    return (spec or "none").strip().lower() == "flip"


def check_augment(spec: str) -> None:
    """ValueError for a spec ``make_transform`` cannot build."""
    from ..data.transforms import parse_augment

    parse_augment(spec.partition(":")[2] or "ssd" if spec.startswith("bounded") else spec)


def default_workers() -> int:
    """Loader processes when ``--workers`` is not given: min(4, this process's cores - 1).

    The cores are those this process may run on (``sched_getaffinity``) shared
    by the ranks ``torchrun`` started on this machine; one core stays with the
    training step. On a 2-core machine: 1 worker (0 for each of 2 ranks).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_rank = (cores or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, per_rank - 1))


def stack_dataset(dataset: DetectionDataset) -> tuple[Tensor, Tensor]:
    """All of an un-augmented data set at once: (images uint8 [N, 3, S, S], targets [N, M, 5])."""
    return torch.stack(list(dataset.images)), collate([dataset[i] for i in range(len(dataset))])[1]


def flip_rows(images: Tensor, labels: Tensor, flip: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror the images where ``flip`` (Tensor[B] bool) left-right, boxes with them.

    Args:
        images (Tensor[B, 3, S, S]), labels (Tensor[B, M, 5]) ``collate``'s rows
        (class 1..C, x1, y1, x2, y2) normalised, class 0 for padding.
    """
    if not flip.any():
        return images, labels
    images, labels = images.clone(), labels.clone()
    images[flip] = images[flip].flip(-1)
    rows = labels[flip]
    x1, x2 = rows[..., 1].clone(), rows[..., 3].clone()
    real = rows[..., 0] > 0
    rows[..., 1] = torch.where(real, 1 - x2, x1)
    rows[..., 3] = torch.where(real, 1 - x1, x2)
    labels[flip] = rows
    return images, labels


def flip_batch(images: Tensor, labels: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Mirror a random half of a batch left-right, boxes with it (``flip_rows``, coins from
    ``generator``)."""
    return flip_rows(images, labels, torch.rand(len(images), generator=generator) < 0.5)


class _Reads(torch.utils.data.Dataset):
    """What a loader worker reads: ``(index, flip)`` -> ``(image, target)``, or the error's
    message when the image no longer decodes (the batch goes on without it)."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[Tensor, dict[str, Tensor]] | str:
        i, flip = key
        try:
            image, target = self.dataset[i]
        except DataError as e:
            return str(e)
        if flip:
            boxes = target["boxes"].clone()
            boxes[:, 0], boxes[:, 2] = 1 - target["boxes"][:, 2], 1 - target["boxes"][:, 0]
            image, target = image.flip(-1), {**target, "boxes": boxes}
        return image, target


def _collate_reads(batch: list) -> tuple[Tensor, Tensor, list[str]]:
    """``collate`` of the samples read, and the messages of those that failed."""
    samples = [s for s in batch if not isinstance(s, str)]
    failed = [s for s in batch if isinstance(s, str)]
    if not samples:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, 1, 5), failed
    return (*collate(samples), failed)


def read_batches(
    dataset: DetectionDataset,
    sampler: GlobalBatchSampler,
    workers: int = 0,
    stacked: tuple[Tensor, Tensor] | None = None,
    pin_memory: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's batches ``(images uint8 [B, 3, S, S], labels [B, M, 5])`` of the sampler's
    epoch.

    With ``stacked`` (``stack_dataset``: ``--cache ram``, no per-image
    augmentation) they are gathered from it; else ``workers`` DataLoader
    processes read (decode, augment) only this rank's images. An image that
    fails to decode is left out of its batch, logged and added to
    ``dataset.failed_reads`` and to its report.
    """
    if stacked is not None:
        yield from _stacked_batches(stacked, sampler)
        return
    loader = torch.utils.data.DataLoader(
        _Reads(dataset),
        batch_sampler=sampler,
        collate_fn=_collate_reads,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(sampler.seed + sampler.epoch + 7919 * sampler.rank),
    )
    for images, labels, failed in loader:
        for message in failed:
            log.warning("skipped an image that did not decode: %s", message)
            dataset.failed_reads.append(message)
            dataset.report.add(UNREADABLE_IMAGE, message)
        if len(images):
            yield images, labels


def _stacked_batches(
    stacked: tuple[Tensor, Tensor], sampler: GlobalBatchSampler
) -> Iterator[tuple[Tensor, Tensor]]:
    images, labels = stacked
    for share in sampler:
        idx = torch.tensor([i for i, _ in share])
        flip = torch.tensor([f for _, f in share])
        lab = labels[idx]
        m = int((lab[..., 0] > 0).sum(dim=1).max().clamp(min=1))
        yield flip_rows(images[idx], lab[:, :m], flip)


def batches(
    dataset: DetectionDataset,
    batch_size: int,
    seed: int,
    epoch: int,
    workers: int = 0,
    stacked: tuple[Tensor, Tensor] | None = None,
    flip: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches of one process (``read_batches`` of a ``GlobalBatchSampler``).

    The order (and ``flip``'s choices) depend only on (seed, epoch), so a
    resumed run sees the same batches, whatever the cache.
    """
    sampler = GlobalBatchSampler(len(dataset), batch_size, seed, flip=flip)
    sampler.set_epoch(epoch)
    return read_batches(dataset, sampler, workers, stacked)
