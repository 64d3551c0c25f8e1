"""Training: ``tinyssd.train`` and ``tinyssd train``.

    tinyssd train --data ../shared/data/banana-detection
    torchrun --standalone --nproc-per-node 2 -m tinyssd train --data DIR   # several processes

The loop: get batch, forward, label anchors, loss, backward, step; after each
epoch: evaluate on val, log, checkpoint, maybe stop. It calls named helpers: one
step is ``step.train_step``; how many epochs, which of them evaluate val and when to
stop are ``schedule``'s; what a checkpoint keeps for ``--resume``, and resuming, are
``resume``'s; what a run writes is ``run_folder``'s. The run folder gets
``config.json``, ``labels.png``, ``metrics.csv``, ``curves.png``,
``last.safetensors`` and ``best.safetensors`` (best val COCO AP), and at the end
the report of the best weights on val: ``results.json``, ``val_predictions.png``,
``confusion_matrix.png``, ``P_curve.png``, ``R_curve.png``, ``F1_curve.png``,
``PR_curve.png`` (and TensorBoard event files with ``--tensorboard``).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import read_checkpoint, split_state
from ..config import RunConfig, TrainConfig, check, resolve_config
from ..data import DetectionDataset
from ..data.limits import DataLimits
from ..errors import TinySSDError, UsageError
from ..inference import evaluate_dataset, resolve_device, resolve_precision
from ..losses import LossConfig, MultiBoxLoss
from ..models import PRESETS, SSD
from ..models.prior import init_class_prior
from ..predict.base import model_threshold
from . import distributed as dist
from .allocator import freed_memory_kept
from .finetune import backbone_freeze, check_finetune, start_from
from .inputs import (
    check_augment,
    default_workers,
    flips_whole_batches,
    make_datasets,
    model_config,
    read_batches,
    read_splits,
    stack_dataset,
)
from .optim import ModelEMA, build_optimizer, lr_at, param_groups, set_lr
from .report import TrainResult, default_logging, progress_bar, training_header
from .resume import TrainState, finished_run, resume, resume_checkpoint, run_config, state_extra
from .run_folder import METRIC_COLUMNS, RunFolder, check_out
from .schedule import ema_ramp, epochs_for, log_val_epochs, should_stop, validates
from .step import EpochMeter, Step, train_step

log = logging.getLogger("tinyssd")

__all__ = ["METRIC_COLUMNS", "TrainConfig", "TrainResult", "train"]


class TrainingError(TinySSDError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to try."""


# ---------------------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_settings(cfg: RunConfig) -> None:
    """Every option that can be checked without data: a UsageError naming it."""
    check(cfg)
    if cfg.model not in PRESETS:
        raise UsageError(f"--model {cfg.model!r}: choose from {', '.join(PRESETS)}")
    check_finetune(cfg)
    try:
        LossConfig.parse(cfg.loss)
    except ValueError as e:
        raise UsageError(f"--loss {cfg.loss!r}: {e}") from None
    try:
        check_augment(cfg.augment)
    except ValueError as e:
        raise UsageError(f"--augment {cfg.augment!r}: {e}") from None


# ---------------------------------------------------------------------------- the loop


def check_finite(step: Step, epoch: int, index: int, lr: float) -> None:
    """TrainingError when the loss is NaN or infinite (the weights would be garbage)."""
    loss = step.losses["loss"]
    if not bool(torch.isfinite(loss)):
        raise TrainingError(
            f"epoch {epoch + 1}, step {index + 1}: the loss is {loss.detach().item()}; "
            f"training stopped (lr {lr:g} may be too high: try a lower --lr); "
            "the last finite checkpoint is kept"
        )


def check_finite_weights(model: torch.nn.Module, epoch: int, lr: float) -> None:
    """TrainingError when a weight is NaN or infinite: such weights are never saved."""
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise TrainingError(
                f"epoch {epoch + 1}: weight {name} is not finite; training stopped "
                f"(lr {lr:g} may be too high: try a lower --lr); "
                "the last finite checkpoint is kept"
            )


@dataclass
class Fit:
    """What the steps of a run share: the networks, the loss, the optimiser and its plan."""

    model: torch.nn.Module  # the weights the optimiser updates
    step_model: torch.nn.Module  # the same, maybe wrapped (DDP) or compiled
    loss_fn: MultiBoxLoss
    optimizer: torch.optim.Optimizer
    lr_schedule: Callable[[int], float]  # step -> learning rate
    steps_per_epoch: int
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    grad_clip: float = 0.0
    ema: ModelEMA | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16: loss scaling
    assigner: str = "max_iou"  # which anchors learn a box
    global_batch: int = 0  # images per step, all processes together

    @property
    def eval_model(self) -> torch.nn.Module:
        """What is evaluated, saved as ``model.`` and predicted with: the EMA if kept."""
        return self.ema.module if self.ema is not None else self.model


def train_one_epoch(
    fit: Fit,
    batch_iter: Iterator[tuple[Tensor, Tensor]],
    epoch: int,
    epochs: int,
    show_progress: bool,
) -> dict[str, float]:
    """The epoch's steps; returns its training metrics (a metrics.csv row's first half)."""
    fit.model.train()
    meter = EpochMeter(fit.device)
    bar = progress_bar(
        batch_iter, fit.steps_per_epoch, f"epoch {epoch + 1}/{epochs}", show_progress
    )
    for index, (images, targets) in enumerate(bar):
        t0 = time.perf_counter()
        lr = fit.lr_schedule(epoch * fit.steps_per_epoch + index)
        set_lr(fit.optimizer, lr)
        images = images.to(fit.device, non_blocking=True)
        targets = targets.to(fit.device, non_blocking=True)
        step = train_step(
            fit.step_model,
            fit.loss_fn,
            fit.optimizer,
            images,
            targets,
            fit.autocast_dtype,
            fit.grad_clip,
            fit.scaler,
            fit.assigner,
        )
        check_finite(step, epoch, index, lr)
        if fit.ema is not None:
            fit.ema.update(fit.model)
        meter.add(step)
        if fit.device.type == "cuda":
            torch.cuda.synchronize()
        meter.seconds += time.perf_counter() - t0
        if show_progress and (index % 5 == 0 or index == fit.steps_per_epoch - 1):
            r = meter.result()
            bar.set_postfix(
                loss=f"{r['loss']:.3g}",
                cls_err=f"{r['class_err']:.2e}",
                mae=f"{r['bbox_mae']:.2e}",
                lr=f"{lr:.3g}",
                img_s=f"{r['images_per_s']:.1f}",
            )
    bar.close()
    return meter.result()


def validate(
    model: torch.nn.Module, val_ds: DetectionDataset, batch_size: int, device: torch.device
) -> dict[str, float]:
    """Val AP50 and COCO AP (fp32), the score threshold that maximises F1 on val (what
    predict, serve and the pictures use by default) and each class's AP (``val_class_AP``:
    name -> AP, for TensorBoard), or nothing for an empty val split."""
    if not len(val_ds):
        return {}
    metrics = evaluate_dataset(model, val_ds, batch_size, device)
    per_class = metrics["per_class"]
    return {
        "val_AP50": metrics["AP50"],
        "val_AP": metrics["AP"],
        "val_threshold": metrics["f1_threshold"],
        "val_class_AP": {
            name: per_class[label]["AP"]
            for label, name in enumerate(val_ds.classes, start=1)
            if label in per_class and per_class[label]["AP"] > -1
        },
    }


def train(
    config: TrainConfig | None = None, *, limits: DataLimits | None = None, **overrides: Any
) -> TrainResult:
    """Train a detector; returns its run folder and metrics (a ``TrainResult``, which
    stands for the folder where a path does). Keywords are ``TrainConfig``'s fields;
    ``limits`` what the data readers accept (None: ``DataLimits.from_env()``). The
    epochs' lines go to the ``tinyssd`` logger (on stderr if logging is not configured).

    Example::

        run = tinyssd.train(data="data/banana-detection", out="runs/bananas")
        run.best["val_AP"], run.classes[0]["recall"], run / "results.json"
        run = tinyssd.train(resume="runs/bananas", epochs=40)   # continue, 40 in all
    """
    with default_logging():
        return _train(config, limits, overrides)


def _train(
    config: TrainConfig | None, limits: DataLimits | None, overrides: dict[str, Any]
) -> TrainResult:
    if config is not None:
        overrides = {**config.to_dict(), **overrides}
    cfg = resolve_config(overrides)
    check_settings(cfg)
    # on every process, before joining the group: all of them stop with rank 0's line
    check_out(cfg.out, own=bool(cfg.resume) or cfg.exist_ok)
    limits = limits if limits is not None else DataLimits.from_env()
    dist_ctx = dist.init_distributed()
    device = dist_ctx.device if dist_ctx.enabled else resolve_device(cfg.device)
    autocast_dtype = resolve_precision(cfg.precision, device)
    with freed_memory_kept(device.type == "cpu"):  # large activations: reuse heap memory
        try:
            return _fit(cfg, limits, dist_ctx, device, autocast_dtype)
        finally:
            dist_ctx.close()


def _fit(
    cfg: RunConfig,
    limits: DataLimits,
    dist_ctx: dist.DistContext,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> TrainResult:
    resume_file = resume_checkpoint(cfg.resume) if cfg.resume else None
    global_batch = cfg.batch_size * dist_ctx.world_size
    if resume_file is not None and (done := finished_run(cfg, resume_file, global_batch)):
        return done
    main = dist_ctx.is_main
    out = Path(cfg.out)
    run = RunFolder(out, own=bool(cfg.resume) or cfg.exist_ok, main=main)
    seed_everything(cfg.seed)

    splits = read_splits(cfg, limits)
    config = model_config(cfg, splits)  # --anchors auto fits them to the training boxes
    train_ds, val_ds = make_datasets(cfg, splits, config)
    model = SSD(len(train_ds.classes), config)
    if cfg.class_prior:
        init_class_prior(model.cls_heads, model.num_classes, cfg.class_prior)
    start_from(model, cfg)  # --init / --pretrained weights (not when resuming)
    freeze = backbone_freeze(model, cfg)
    model = model.to(device).to(memory_format=torch.channels_last)
    flip = flips_whole_batches(cfg.augment)
    sampler = dist.GlobalBatchSampler(
        len(train_ds), global_batch, cfg.seed, dist_ctx.rank, dist_ctx.world_size, flip
    )
    steps_per_epoch = len(sampler)
    epochs = epochs_for(cfg, steps_per_epoch)
    if main and len(val_ds):
        log_val_epochs(epochs, cfg.val_interval)
    fit = Fit(
        model=model,
        step_model=model,
        loss_fn=MultiBoxLoss(LossConfig.parse(cfg.loss)),
        optimizer=make_optimizer(model, cfg),
        lr_schedule=partial(
            lr_at,
            total=epochs * steps_per_epoch,
            base_lr=cfg.lr,
            warmup=min(cfg.warmup, epochs * steps_per_epoch // 2),
            schedule=cfg.schedule,
        ),
        steps_per_epoch=steps_per_epoch,
        device=device,
        autocast_dtype=autocast_dtype,
        grad_clip=cfg.grad_clip,
        ema=ModelEMA(model, cfg.ema, ema_ramp(epochs * steps_per_epoch)) if cfg.ema else None,
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
        assigner=cfg.assigner,
        global_batch=global_batch,
    )
    state = TrainState()
    if resume_file is not None:
        state = resume(resume_file, fit, cfg)
    run.start(run_config(cfg, model, train_ds.classes, fit.loss_fn.config), cfg.tensorboard)
    if main:
        header = training_header(
            cfg.model, model, config.image_size, train_ds, val_ds, device, autocast_dtype
        )
        log.info("%s", header)
        run.write_labels(train_ds)

    fit.step_model = dist_ctx.wrap(model)
    if cfg.compile:
        fit.step_model = torch.compile(fit.step_model)  # type: ignore[assignment]
    stackable = train_ds.transform is None and train_ds.cache == "ram"  # the fast path
    stacked = stack_dataset(train_ds) if stackable else None
    workers = default_workers() if cfg.workers is None else cfg.workers
    if stacked is None:
        log.info("reading images with %d loader worker process(es) (--workers)", workers)

    for epoch in range(state.epoch, epochs):
        freeze.set_epoch(epoch)
        sampler.set_epoch(epoch)  # this rank's share of each global batch, seeded per epoch
        local_batches = read_batches(
            train_ds, sampler, workers, stacked, pin_memory=device.type == "cuda"
        )
        row: dict[str, Any] = {"epoch": epoch + 1}
        row |= train_one_epoch(fit, local_batches, epoch, epochs, cfg.progress and main)
        row["lr"] = fit.optimizer.param_groups[0]["lr"]
        check_finite_weights(fit.eval_model, epoch, fit.optimizer.param_groups[0]["lr"])
        if main:
            evaluated = validates(epoch + 1, epochs, cfg.val_interval)
            if evaluated:
                row |= validate(fit.eval_model, val_ds, cfg.batch_size, device)
            state.epoch = epoch + 1
            state.history.append(row)
            improved = row.get("val_AP", -1.0) > state.best_ap or not val_ds
            state.best_ap = max(state.best_ap, row.get("val_AP", -1.0))
            run.log_epoch(state.history, epochs, draw=evaluated)
            training_weights = fit.model if fit.ema is not None else None
            extra = state_extra(state, fit)
            run.save(fit.eval_model, fit.optimizer, state.epoch, extra, improved, training_weights)
        if should_stop(cfg, row, state.history if main else None):
            break
    return finish_run(run, fit, val_ds, device, state)


def finish_run(
    run: RunFolder, fit: Fit, val_ds: DetectionDataset, device: torch.device, state: TrainState
) -> TrainResult:
    """The report on the weights ``tinyssd.load(run)`` takes (best.safetensors) at their
    stored threshold, written into the run folder; the result of ``train``."""
    final = state.history[-1] if state.history else {}
    aps = [r.get("val_AP", -1.0) for r in state.history]
    best = state.history[aps.index(max(aps))] if aps else {}
    best_file = run.path / "best.safetensors"
    model = fit.eval_model
    if run.main and best_file.is_file():
        tensors, meta = read_checkpoint(best_file)
        model.load_state_dict(split_state(tensors, "model."))
        best = next((r for r in state.history if r["epoch"] == meta["epoch"]), best)
    threshold = model_threshold(best.get("val_threshold"))
    extra = {"weights": "best.safetensors", "epoch": best.get("epoch"), "final": final}
    report = run.finish(model, val_ds, device, threshold, {**extra, "best": best})
    rows = report.rows if report is not None else []
    return TrainResult(run.path, final, best, rows, threshold if report is not None else None)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``: every parameter decayed (the chapter) or not BN/bias."""
    params = (
        list(model.parameters()) if cfg.norm_bias_decay else param_groups(model, cfg.weight_decay)
    )
    return build_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
