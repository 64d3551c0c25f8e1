"""What training reads: the splits, the model's anchors fitted to them, the datasets, batches.

splits = read_splits(cfg, limits)               # records only, no pixels yet (--tile: tiles)
config = model_config(cfg, splits)              # preset, image size, --anchors auto
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
from typing import NamedTuple, cast

import torch
from torch import Tensor

from ..config import RunConfig
from ..data import (
    DataLimits,
    DetectionDataset,
    Report,
    Split,
    collate,
    has_own_val,
    load_split,
    split_off_val,
)
from ..data.base import UNREADABLE_IMAGE
from ..data.dataset import hflip, normalised_boxes
from ..errors import DataError, UsageError
from ..models import PRESETS, SSDConfig
from ..models.anchor_fit import fit_for_data
from ..models.coco import coco_config
from ..tiling import Tiling
from .distributed import GlobalBatchSampler

log = logging.getLogger("tinyssd")


class Splits(NamedTuple):
    root: str
    train: Split
    val: Split
    report: Report
    limits: DataLimits  # what the readers accepted; the datasets decode with the same


def read_splits(cfg: RunConfig, limits: DataLimits | None = None) -> Splits:
    """The train and val records (val relabelled to train's classes); no image decoded.

    With ``--tile`` the training records are the tiles of the large images
    (:func:`data.tiles.tile_split`); val stays whole (predicted by tiles, see
    :func:`make_datasets`). ``limits``: the pixel budget and box limit (None:
    ``DataLimits.from_env()``).
    """
    root = cfg.data
    if root is None:
        from ..data.synthetic import ensure_synthetic

        root = str(ensure_synthetic())
        log.info("no --data given: training on the built-in synthetic data set at %s", root)
    report, limits = Report(), limits or DataLimits.from_env()
    train = load_split(root, "train", cfg.format, report, limits)
    if cfg.val_fraction:
        train, val = split_val(root, cfg, train)
    else:
        val = load_split(root, "val", cfg.format, report, limits).with_classes(train.classes)
    if cfg.tile:
        from ..data.tiles import tile_split

        train = tile_split(train, cfg.tile, cfg.tile_overlap, cfg.seed, limits)
    return Splits(root, train, val, report, limits)


def split_val(root: str, cfg: RunConfig, train: Split) -> tuple[Split, Split]:
    """``--val-fraction``: val drawn from the training images of data that has no val
    split of its own; UsageError where it has one."""
    if has_own_val(root, cfg.format):
        raise UsageError(
            f"--val-fraction {cfg.val_fraction}: {root} has its own val split "
            "(leave the option out to use it)"
        )
    n = len(train.records)
    train, val = split_off_val(train, cast(float, cfg.val_fraction), cfg.seed)
    log.info(
        "--val-fraction %g: %d of %d training images split off as val (seed %d, stratified "
        "by each image's rarest class); train %d images, val %d",
        cfg.val_fraction,
        len(val.records),
        n,
        cfg.seed,
        len(train.records),
        len(val.records),
    )
    return train, val


def model_config(cfg: RunConfig, splits: Splits) -> SSDConfig:
    """The network's config: the preset, ``--image-size``, anchors fitted with ``--anchors auto``
    (:func:`models.anchor_fit.fit_for_data`, as ``tinyssd data check --model`` does).

    Logs the share of training boxes no anchor matches at IoU 0.5, before and after fitting.
    """
    config = coco_config(cfg.model) if cfg.pretrained == "coco" else PRESETS[cfg.model]()
    config = replace(config, image_size=cfg.image_size or config.image_size)
    if cfg.anchors != "auto":
        return config
    fit = fit_for_data(config, normalised_boxes(splits.train, splits.limits))
    if fit.boxes < 2:
        log.info("--anchors auto: fewer than 2 training boxes, keeping the preset's anchors")
    else:
        log.info(
            "anchors fitted to %d training boxes: boxes no anchor matches (IoU < 0.5) "
            "%.1f%% -> %.1f%%%s",
            fit.boxes,
            100 * fit.before,
            100 * fit.after,
            "; keeping the preset's, which match more" if fit.kept_preset else "",
        )
    return fit.config


def make_datasets(
    cfg: RunConfig, splits: Splits, config: SSDConfig
) -> tuple[DetectionDataset, DetectionDataset]:
    """The datasets of the splits (train with its augmentation), their images held as
    ``--cache`` says; log what was skipped. With ``--tile`` val images are held at full
    resolution, to be predicted by tiles and whole as the trained model will be."""
    size = config.image_size
    transform = make_transform(cfg.augment, size, min(min(s) for s in config.sizes))
    cache = cfg.cache
    train_ds = DetectionDataset(
        splits.train, size, transform, splits.report, cache=cache, limits=splits.limits
    )
    tiling = Tiling(cfg.tile, cfg.tile_overlap) if cfg.tile else None
    val_cache = train_ds.cache  # --cache auto decides (and says) once, on train; val follows
    val_ds = DetectionDataset(
        splits.val, size, None, splits.report, cache=val_cache, limits=splits.limits, tiling=tiling
    )
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
    whole batches by ``read_batches``).

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


def flips_whole_batches(spec: str) -> bool:
    """``--augment flip``: the one part that works on stacked batches (no per-image work)."""
    return spec.strip().lower() == "flip"


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
    rows = labels[flip]
    images[flip], boxes = hflip(images[flip], rows[..., 1:])
    real = rows[..., :1] > 0  # padding rows stay all 0
    rows[..., 1:] = torch.where(real, boxes, rows[..., 1:])
    labels[flip] = rows
    return images, labels


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
            image, boxes = hflip(image, target["boxes"])
            target = {**target, "boxes": boxes}
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
