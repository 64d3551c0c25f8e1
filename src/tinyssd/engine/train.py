"""Training: the chapter's loop as a function (``tinyssd.train``) and a command.

    tinyssd train --data ../shared/data/banana-detection --epochs 20
    torchrun --nproc-per-node 2 -m tinyssd train --data DIR      # several processes

Each epoch: get batch, forward, label anchors, loss, backward, step; then
evaluate on val, log, checkpoint. The run folder gets ``config.json``,
``metrics.csv``, ``curves.png``, ``val_predictions.png``, ``last.safetensors``
and ``best.safetensors`` (best val COCO AP).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..data import DetectionDataset, Report, collate, load_split
from ..data.base import DataError, read_image
from ..losses import LossConfig, MultiBoxLoss
from ..matching import multibox_target
from ..models import SSD, build_model
from ..viz import draw_detections, plot_curves, save_grid
from . import distributed as dist
from .allocator import keep_freed_memory
from .checkpoint import resolve_weights, restore, save_checkpoint
from .evaluate import evaluate_model, predict_dataset

log = logging.getLogger("tinyssd")

METRIC_COLUMNS = [
    "epoch",
    "loss",
    "cls_loss",
    "box_loss",
    "class_err",
    "bbox_mae",
    "val_AP50",
    "val_AP",
    "seconds",
    "images_per_s",
]


# Boxes drawn in val_predictions.png: low enough to show what a young model finds.
VAL_PICTURE_THRESHOLD = 0.3


@dataclass
class TrainConfig:
    """What ``tinyssd train`` was asked to do; written to ``config.json``."""

    data: str | None = None  # data folder; None = built-in synthetic set
    format: str = "auto"
    model: str = "tiny_ssd"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.2
    weight_decay: float = 5e-4
    momentum: float = 0.0  # SGD momentum (the chapter uses none)
    image_size: int = 256
    out: str | None = None
    seed: int = 0
    resume: str | None = None
    device: str = "auto"
    augment: str = "none"
    loss: str = "chapter"
    compile: bool = False
    precision: str = "auto"  # "fp32", "bf16" (autocast), or "auto": bf16 where the CPU/GPU has it
    workers: int = 0
    progress: bool = True
    stop_ap50: float | None = None  # stop once val AP50 reaches this (time-to-accuracy runs)

    def __post_init__(self) -> None:
        for name in ("data", "out", "resume"):  # Path objects welcome; config.json holds str
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda: no CUDA device is available")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the forward pass, or None for plain fp32."""
    if name == "fp32":
        return None
    if name not in ("auto", "bf16"):
        raise ValueError(f"precision {name!r}: choose from auto, fp32, bf16")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = (
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    if name == "bf16" and not supported:
        raise DataError(f"--precision bf16: not supported on this {device.type} device")
    return torch.bfloat16 if supported else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_datasets(cfg: TrainConfig) -> tuple[DetectionDataset, DetectionDataset]:
    """Read, check and decode the train and val splits; log what was skipped."""
    root = cfg.data
    if root is None:
        from ..data.synthetic import ensure_synthetic

        root = str(ensure_synthetic())
        log.info("no --data given: training on the built-in synthetic data set at %s", root)
    report = Report()
    train_split = load_split(root, "train", cfg.format, report)
    val_split = load_split(root, "val", cfg.format, report).with_classes(train_split.classes)
    transform = None
    if cfg.augment != "none":
        from ..data.transforms import parse_augment, train_transform

        transform = train_transform(cfg.image_size, **parse_augment(cfg.augment))
    train_ds = DetectionDataset(train_split, cfg.image_size, transform, report)
    val_ds = DetectionDataset(val_split, cfg.image_size, None, report)
    if report:
        log.info("data check for %s:\n%s", root, report.summary())
    if len(train_ds) == 0:
        raise DataError(f"{root}: no usable training images")
    return train_ds, val_ds


def batches(
    dataset: DetectionDataset, batch_size: int, seed: int, epoch: int, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled batches ``(images uint8 [B, 3, S, S], labels [B, M, 5])``.

    The order depends only on (seed, epoch), so a resumed run sees the same
    batches. Without augmentation the cached images are gathered directly.
    """
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed + epoch))
    if dataset.transform is None:
        stacked = getattr(dataset, "_stacked", None)
        if stacked is None:
            stacked = (
                torch.stack(dataset.images),
                collate([dataset[i] for i in range(len(dataset))])[1],
            )
            dataset._stacked = stacked
        images, labels = stacked
        for idx in order.split(batch_size):
            lab = labels[idx]
            m = int((lab[..., 0] >= 0).sum(dim=1).max().clamp(min=1))
            yield images[idx], lab[:, :m]
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order.tolist()),
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed + epoch),
    )
    yield from loader


def make_targets(anchors: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The chapter's ``multibox_target`` on the model's anchors."""
    return multibox_target(anchors, labels)


def train_step(
    step_model: torch.nn.Module,
    loss_fn: MultiBoxLoss,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[dict[str, Tensor], tuple[Tensor, ...]]:
    """One iteration: forward (channels_last, optional autocast), label anchors, loss,
    backward, step. Returns the loss dict and (cls_preds, cls_labels, bbox_preds,
    bbox_labels, bbox_masks) for the metrics."""
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, autocast_dtype, enabled=autocast_dtype is not None):
        anchors, cls_preds, bbox_preds = step_model(images)
    bbox_labels, bbox_masks, cls_labels = make_targets(anchors, labels)
    out = loss_fn(cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    return out, (cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)


class EpochMeter:
    """Sums of the chapter's metrics on the device (no host sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.images = 0
        self.seconds = 0.0

    def add(self, out: dict, cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks) -> None:
        with torch.no_grad():
            correct = (cls_preds.argmax(dim=-1) == cls_labels).sum()
            abs_err = ((bbox_labels - bbox_preds) * bbox_masks).abs().sum()
            self.sums += torch.stack(
                [
                    out["loss"].detach().double() * len(cls_labels),
                    out["cls_loss"].double() * len(cls_labels),
                    out["box_loss"].double() * len(cls_labels),
                    correct.double(),
                    torch.tensor(float(cls_labels.numel()), dtype=torch.float64),
                    abs_err.double(),
                ]
            )
        self.images += len(cls_labels)

    def result(self, num_box_values_per_image: int) -> dict[str, float]:
        loss, cls, box, correct, anchors, abs_err = self.sums.tolist()
        n = max(self.images, 1)
        return {
            "loss": loss / n,
            "cls_loss": cls / n,
            "box_loss": box / n,
            "class_err": 1 - correct / max(anchors, 1),
            "bbox_mae": abs_err / max(self.images * num_box_values_per_image, 1),
            "seconds": self.seconds,
            "images_per_s": self.images / max(self.seconds, 1e-9),
        }


def train_one_epoch(
    model: torch.nn.Module,
    step_model: torch.nn.Module,
    loss_fn: MultiBoxLoss,
    optimizer: torch.optim.Optimizer,
    batch_iter: Iterator[tuple[Tensor, Tensor]],
    device: torch.device,
    num_batches: int,
    desc: str,
    progress: bool,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    model.train()
    meter = EpochMeter(device)
    num_box_values = 0
    bar = tqdm(
        batch_iter,
        total=num_batches,
        desc=desc,
        disable=not progress,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for step, (images, labels) in enumerate(bar):
        t0 = time.perf_counter()
        images = images.to(device, non_blocking=True)
        out, preds_and_targets = train_step(
            step_model, loss_fn, optimizer, images, labels.to(device), autocast_dtype
        )
        meter.add(out, *preds_and_targets)
        bbox_labels = preds_and_targets[3]
        if device.type == "cuda":
            torch.cuda.synchronize()
        meter.seconds += time.perf_counter() - t0
        num_box_values = bbox_labels.shape[1]
        if progress and (step % 5 == 0 or step == num_batches - 1):
            r = meter.result(num_box_values)
            bar.set_postfix(
                loss=f"{r['loss']:.3g}",
                cls_err=f"{r['class_err']:.2e}",
                mae=f"{r['bbox_mae']:.2e}",
                img_s=f"{r['images_per_s']:.1f}",
            )
    bar.close()
    return meter.result(num_box_values)


def run_config(cfg: TrainConfig, model: SSD, classes: list[str], loss: LossConfig) -> dict:
    """Everything needed to rebuild the model and repeat the run."""
    return {
        "model": cfg.model,
        "num_classes": model.num_classes,
        "classes": list(classes),
        "ssd": model.config.to_dict(),
        "loss": loss.to_dict(),
        "train": asdict(cfg),
    }


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
    tmp.replace(path)


def save_val_predictions(
    model: torch.nn.Module, dataset: DetectionDataset, path: Path, device, count: int = 8
) -> None:
    """A grid of val images with their boxes of score >= VAL_PICTURE_THRESHOLD drawn."""
    subset_idx = list(range(min(count, len(dataset))))
    if not subset_idx:
        return
    dets = predict_dataset(model, dataset, 32, device, indices=subset_idx)
    pictures = []
    for i, d in zip(subset_idx, dets, strict=True):
        keep = d["scores"] >= VAL_PICTURE_THRESHOLD
        image = read_image(dataset.records[i].image)
        pictures.append(
            draw_detections(
                image, d["boxes"][keep], d["scores"][keep], d["labels"][keep], dataset.classes
            )
        )
    save_grid(pictures, path)


def default_run_dir(data: str | None) -> Path:
    name = Path(data).name if data else "synthetic"
    base = Path("runs") / name
    if not base.exists():
        return base
    i = 2
    while (Path("runs") / f"{name}-{i}").exists():
        i += 1
    return Path("runs") / f"{name}-{i}"


def train(**kwargs) -> Path:
    """Train a detector; returns the run folder. Keywords are ``TrainConfig``'s fields.

    Example::

        run = tinyssd.train(data="data/banana-detection", epochs=20, out="runs/bananas")
    """
    cfg = TrainConfig(**kwargs)
    dist_ctx = dist.init_distributed()
    device = dist_ctx.device if dist_ctx.enabled else resolve_device(cfg.device)
    if device.type == "cpu":
        keep_freed_memory()  # large activations: reuse heap memory, no mmap per step
    resume_file = resolve_weights(cfg.resume) if cfg.resume else None
    if cfg.out is None:
        cfg.out = str(resume_file.parent if resume_file else default_run_dir(cfg.data))
    out = Path(cfg.out)
    seed_everything(cfg.seed)

    train_ds, val_ds = load_datasets(cfg)
    model = build_model(cfg.model, len(train_ds.classes), image_size=cfg.image_size).to(device)
    model = model.to(memory_format=torch.channels_last)
    loss_cfg = LossConfig.parse(cfg.loss)
    loss_fn = MultiBoxLoss(loss_cfg)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    config = run_config(cfg, model, train_ds.classes, loss_cfg)
    autocast_dtype = resolve_precision(cfg.precision, device)

    start_epoch, rows, best_ap = 0, [], -1.0
    if resume_file is not None:
        meta = restore(resume_file, model, optimizer, rng=True)
        start_epoch = meta["epoch"]
        rows = meta["extra"].get("history", [])
        best_ap = meta["extra"].get("best_ap", -1.0)
        log.info("resumed %s at epoch %d", resume_file, start_epoch)

    step_model = dist_ctx.wrap(model)
    if cfg.compile:
        step_model = torch.compile(step_model)
    main = dist_ctx.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=1))
    shard = dist_ctx.shard
    num_batches = (len(shard(range(len(train_ds)))) + cfg.batch_size - 1) // cfg.batch_size

    for epoch in range(start_epoch, cfg.epochs):
        batch_iter = dist_ctx.shard_batches(
            batches(train_ds, cfg.batch_size * dist_ctx.world_size, cfg.seed, epoch, cfg.workers)
        )
        row = {"epoch": epoch + 1}
        row.update(
            train_one_epoch(
                model,
                step_model,
                loss_fn,
                optimizer,
                batch_iter,
                device,
                num_batches,
                f"epoch {epoch + 1}/{cfg.epochs}",
                cfg.progress and main,
                autocast_dtype,
            )
        )
        if main and len(val_ds):
            metrics = evaluate_model(model, val_ds, cfg.batch_size, device)
            row["val_AP50"], row["val_AP"] = metrics["AP50"], metrics["AP"]
        rows.append(row)
        if main:
            log.info(
                "epoch %d/%d: loss %.4f, class err %.2e, bbox mae %.2e, val AP50 %s, AP %s, "
                "%.1f s, %.1f images/s",
                epoch + 1,
                cfg.epochs,
                row["loss"],
                row["class_err"],
                row["bbox_mae"],
                _fmt(row.get("val_AP50")),
                _fmt(row.get("val_AP")),
                row["seconds"],
                row["images_per_s"],
            )
            write_metrics(out / "metrics.csv", rows)
            plot_curves(rows, out / "curves.png")
            ap = row.get("val_AP", -1.0)
            improved = ap > best_ap
            best_ap = max(best_ap, ap)
            extra = {"history": rows, "best_ap": best_ap}
            save_checkpoint(out / "last.safetensors", model, config, optimizer, epoch + 1, extra)
            if improved or not (out / "best.safetensors").exists():
                save_checkpoint(
                    out / "best.safetensors", model, config, optimizer, epoch + 1, extra
                )
        if cfg.stop_ap50 is not None and row.get("val_AP50", -1.0) >= cfg.stop_ap50:
            log.info("val AP50 %.3f >= %.3f: stopping", row["val_AP50"], cfg.stop_ap50)
            break
    if main:
        if len(val_ds):
            save_val_predictions(model, val_ds, out / "val_predictions.png", device)
        log.info("run folder: %s", out)
    dist_ctx.close()
    return out


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"
