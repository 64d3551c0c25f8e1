"""Training: ``tinyssd.train`` and ``tinyssd train``.

    tinyssd train --data ../shared/data/banana-detection
    torchrun --standalone --nproc-per-node 2 -m tinyssd train --data DIR   # several processes

The loop: get batch, forward, label anchors, loss, backward, step; after each
epoch: evaluate on val, log, checkpoint, maybe stop. The run folder gets
``config.json``, ``labels.png``, ``metrics.csv``, ``curves.png``,
``last.safetensors`` and ``best.safetensors`` (best val COCO AP), and at the end
the report of the best weights on val: ``results.json``, ``val_predictions.png``,
``confusion_matrix.png``, ``P_curve.png``, ``R_curve.png``, ``F1_curve.png``,
``PR_curve.png`` (and TensorBoard event files with ``--tensorboard``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import read_checkpoint, read_metadata, resolve_checkpoint, restore, split_state
from ..config import VAL_EPOCHS, RunConfig, TrainConfig, check, resolve_config
from ..data import DetectionDataset
from ..data.limits import DataLimits
from ..errors import TinySSDError, UsageError
from ..inference import autocast, evaluate_dataset, resolve_device, resolve_precision
from ..losses import LossConfig, MultiBoxLoss
from ..matching import anchor_targets
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
from .run_folder import METRIC_COLUMNS, RunFolder, check_out, stopped_before_checkpoint

log = logging.getLogger("tinyssd")

__all__ = ["METRIC_COLUMNS", "TrainConfig", "TrainResult", "train", "train_step"]


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


# ---------------------------------------------------------------------------- one step


@dataclass
class Step:
    """What one training step computed: its losses, and predictions against targets."""

    losses: dict[str, Tensor]  # "loss", "cls_loss", "box_loss"
    cls_logits: Tensor  # (B, A, K)
    cls_targets: Tensor  # (B, A) int64, 0 = background
    box_deltas: Tensor  # (B, 4A)
    box_targets: Tensor  # (B, 4A)
    box_mask: Tensor  # (B, 4A)


def train_step(
    step_model: torch.nn.Module,
    loss_fn: MultiBoxLoss,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    autocast_dtype: torch.dtype | None = None,
    grad_clip: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    assigner: str = "max_iou",
) -> Step:
    """One iteration: forward (channels_last, optional autocast), label anchors, loss,
    backward, (gradient clipping,) optimiser step; through ``scaler`` (fp16) if given.

    ``images`` (Tensor[B, 3, S, S]), ``targets`` (Tensor[B, M, 5]): ``collate``'s rows
    (class 1..C, normalised xyxy; class 0 = padding); ``assigner``: which anchors learn
    a box (``matching.anchor_targets``)."""
    images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, autocast_dtype):
        anchors, cls_logits, box_deltas = step_model(images)
    box_targets, box_mask, cls_targets = anchor_targets(anchors, targets, assigner=assigner)
    losses = loss_fn(cls_logits, cls_targets, box_deltas, box_targets, box_mask, anchors)
    scaler = scaler or torch.amp.GradScaler(images.device.type, enabled=False)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return Step(losses, cls_logits, cls_targets, box_deltas, box_targets, box_mask)


class EpochMeter:
    """Sums of the chapter's metrics on the device (no host sync per batch)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(6, dtype=torch.float64, device=device)
        self.images = 0
        self.box_values_per_image = 0
        self.seconds = 0.0

    def add(self, step: Step) -> None:
        n = len(step.cls_targets)
        with torch.no_grad():
            correct = (step.cls_logits.argmax(dim=-1) == step.cls_targets).sum()
            abs_err = ((step.box_targets - step.box_deltas) * step.box_mask).abs().sum()
            self.sums += torch.stack(
                [
                    step.losses["loss"].detach().double() * n,
                    step.losses["cls_loss"].double() * n,
                    step.losses["box_loss"].double() * n,
                    correct.double(),
                    torch.tensor(float(step.cls_targets.numel()), dtype=torch.float64),
                    abs_err.double(),
                ]
            )
        self.images += n
        self.box_values_per_image = step.box_targets.shape[1]

    def result(self) -> dict[str, float]:
        loss, cls, box, correct, anchors, abs_err = self.sums.tolist()
        n = max(self.images, 1)
        return {
            "loss": loss / n,
            "cls_loss": cls / n,
            "box_loss": box / n,
            "class_err": 1 - correct / max(anchors, 1),
            "bbox_mae": abs_err / max(self.images * self.box_values_per_image, 1),
            "seconds": self.seconds,
            "images_per_s": self.images / max(self.seconds, 1e-9),
        }


# ---------------------------------------------------------------------------- the loop


@dataclass
class TrainState:
    """Where a run stands: saved in every checkpoint, restored by ``--resume``."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # metrics.csv rows
    best_ap: float = -1.0


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


def validates(epoch: int, epochs: int, interval: int) -> bool:
    """Whether val is evaluated after ``epoch`` (1-based) of ``epochs``: every ``interval``
    epochs and at the last; ``interval`` 0 (auto): every epoch in runs of up to
    ``VAL_EPOCHS``, else every ``ceil(epochs / VAL_EPOCHS)`` and each epoch of the last
    tenth, where the decayed learning rate makes the best weights (a 205-image set's
    1000 steps are 143 epochs of 2 s, each followed by 1.5 s of val)."""
    if epoch >= epochs:
        return True
    if interval:
        return epoch % interval == 0
    every = math.ceil(epochs / VAL_EPOCHS)
    return epoch % every == 0 or epoch > epochs - epochs // 10


def log_val_epochs(epochs: int, interval: int) -> None:
    """One line when val is not evaluated after every epoch: which ones."""
    evaluated = [e for e in range(1, epochs + 1) if validates(e, epochs, interval)]
    if len(evaluated) < epochs:
        log.info(
            "val evaluated after %d of the %d epochs (--val-interval %d%s): %s",
            len(evaluated),
            epochs,
            interval,
            " = auto" if not interval else "",
            _epoch_ranges(evaluated),
        )


def _epoch_ranges(epochs: list[int]) -> str:
    """``[3, 6, 9, 12, 13, 14]`` -> ``"3, 6, ..., 12 and 13-14"``: the regular part,
    then the final run of consecutive epochs."""
    tail = len(epochs) - 1
    while tail > 0 and epochs[tail - 1] == epochs[tail] - 1:
        tail -= 1
    head, run = epochs[:tail], epochs[tail:]
    last = f"{run[0]}-{run[-1]}" if len(run) > 1 else f"{run[0]}"
    if not head:
        return f"epochs {last}"
    shown = head if len(head) <= 3 else [head[0], head[1], "...", head[-1]]
    return f"epochs {', '.join(map(str, shown))} and {last}"


def should_stop(cfg: RunConfig, row: dict, history: list[dict] | None = None) -> bool:
    """True once the val metric of ``--stop-ap50`` or ``--stop-ap`` reaches its target, or
    when val AP has not improved over its best for ``--patience`` epochs (``history``:
    the epochs' rows so far, this one last)."""
    for key, target in (("val_AP50", cfg.stop_ap50), ("val_AP", cfg.stop_ap)):
        if target is not None and row.get(key, -1.0) >= target:
            log.info("%s %.3f >= %.3f: stopping", key, row[key], target)
            return True
    if cfg.patience and history and "val_AP" in row:  # judged where val was evaluated
        aps = [r.get("val_AP", -1.0) for r in history]
        best_epoch = max(range(len(aps)), key=lambda i: (aps[i], -i))  # the first best
        if aps[best_epoch] >= 0 and len(aps) - 1 - best_epoch >= cfg.patience:
            log.info(
                "val AP has not improved for %d epochs (best %.3f at epoch %d; --patience %d): "
                "stopping, best.safetensors kept",
                len(aps) - 1 - best_epoch,
                aps[best_epoch],
                history[best_epoch]["epoch"],
                cfg.patience,
            )
            return True
    return False


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


def ema_ramp(total_steps: int) -> float:
    """The EMA's warm-up time constant in steps: a tenth of the run (10..2000), so that a
    300-step run and a 30,000-step one both average over their late weights."""
    return float(min(max(total_steps / 10, 10), 2000))


def epochs_for(cfg: RunConfig, steps_per_epoch: int, quiet: bool = False) -> int:
    """``--epochs``, raised so that the run takes at least ``--min-steps`` steps and
    lowered so that it takes at most ``--max-steps`` (at least one epoch); logged when
    it is not ``--epochs`` unless ``quiet``."""
    per_epoch = max(steps_per_epoch, 1)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / per_epoch))
    if cfg.max_steps:
        epochs = max(1, min(epochs, cfg.max_steps // per_epoch))
    if epochs != cfg.epochs and not quiet:
        log.info(
            "%d steps per epoch: training %d epochs instead of %d (--min-steps %d, --max-steps %d)",
            steps_per_epoch,
            epochs,
            cfg.epochs,
            cfg.min_steps,
            cfg.max_steps,
        )
    return epochs


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg``: every parameter decayed (the chapter) or not BN/bias."""
    params = (
        list(model.parameters()) if cfg.norm_bias_decay else param_groups(model, cfg.weight_decay)
    )
    return build_optimizer(params, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)


def resume(path: Path, fit: Fit, cfg: RunConfig) -> TrainState:
    """Weights, EMA, optimiser and RNG states of a checkpoint put back in place."""
    ema_module = fit.ema.module if fit.ema is not None else None
    meta = restore(path, fit.model, fit.optimizer, rng=True, ema_model=ema_module)
    extra = meta["extra"]
    if fit.ema is not None:
        fit.ema.updates = int(extra.get("ema_updates", 0))
    for group in fit.optimizer.param_groups:  # the run's settings, as changed by the user
        if "betas" in group:
            group["betas"] = (cfg.momentum, group["betas"][1])
        else:
            group["momentum"] = cfg.momentum
        if group["weight_decay"]:
            group["weight_decay"] = cfg.weight_decay
    log.info("resumed %s at epoch %d", path, meta["epoch"])
    return TrainState(meta["epoch"], extra.get("history", []), extra.get("best_ap", -1.0))


def resume_checkpoint(resume: str) -> Path | None:
    """The checkpoint ``--resume`` continues from; None for a run folder that stopped
    before its first checkpoint (it starts again from epoch 1 with its settings)."""
    folder = Path(resume)
    if folder.is_dir() and stopped_before_checkpoint(folder):
        log.info("%s: stopped before its first checkpoint; starting it again", resume)
        return None
    return resolve_checkpoint(folder, prefer="last")


def finished_run(cfg: RunConfig, resume_file: Path, global_batch: int) -> TrainResult | None:
    """A resumed run that has trained all the epochs ``cfg`` asks for: said in one line
    and returned as it is, without reading the data; else None."""
    meta = read_metadata(resume_file)
    extra = meta.get("extra", {})
    steps_per_epoch = extra.get("steps_per_epoch")
    if steps_per_epoch is None or extra.get("global_batch") != global_batch:
        return None  # the epochs to train are known only once the data is read
    epochs = epochs_for(cfg, steps_per_epoch, quiet=True)
    if meta["epoch"] < epochs:
        return None
    log.info(
        "%s: finished at epoch %d of %d; pass --epochs M to train further",
        cfg.resume,
        meta["epoch"],
        epochs,
    )
    history = extra.get("history", [])
    aps = [r.get("val_AP", -1.0) for r in history]
    best = history[aps.index(max(aps))] if aps else {}
    try:
        classes = json.loads((Path(cfg.out) / "results.json").read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError):
        classes = []
    final = history[-1] if history else {}
    return TrainResult(Path(cfg.out), final, best, classes, best.get("val_threshold"))


def state_extra(state: TrainState, fit: Fit) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "history": state.history,
        "best_ap": state.best_ap,
        # with the epoch, what tells a later --resume whether the run is finished
        "steps_per_epoch": fit.steps_per_epoch,
        "global_batch": fit.global_batch,
    }
    last = state.history[-1] if state.history else {}
    if "val_threshold" in last:  # this epoch's F1-optimal threshold goes with its weights
        extra["score_threshold"] = last["val_threshold"]
    if fit.ema is not None:
        extra["ema_updates"] = fit.ema.updates
    return extra


def run_config(cfg: RunConfig, model: SSD, classes: list[str], loss: LossConfig) -> dict:
    """Everything needed to rebuild the model and repeat the run (``config.json``)."""
    return {
        "model": cfg.model,
        "num_classes": model.num_classes,
        "classes": list(classes),
        "ssd": model.config.to_dict(),
        "loss": loss.to_dict(),
        "train": cfg.to_dict(),
    }
