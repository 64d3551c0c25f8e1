"""What a run saves to be continued or repeated, and ``--resume``: the run's state in
every checkpoint (``TrainState``, ``state_extra``), its ``config.json`` (``run_config``),
and putting them back (``resume_checkpoint``, ``finished_run``, ``resume``).

    tinyssd train --resume runs/bananas               # continues from its last.safetensors
    tinyssd train --resume runs/bananas --epochs 40   # 40 epochs in all
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checkpoint import read_metadata, resolve_checkpoint, restore
from ..config import RunConfig
from ..losses import LossConfig
from ..models import SSD
from .report import TrainResult
from .run_folder import stopped_before_checkpoint
from .schedule import epochs_for

if TYPE_CHECKING:
    from .train import Fit

log = logging.getLogger("tinyssd")


@dataclass
class TrainState:
    """Where a run stands: saved in every checkpoint, restored by ``--resume``."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # metrics.csv rows
    best_ap: float = -1.0


def state_extra(state: TrainState, fit: Fit) -> dict[str, Any]:
    """What a checkpoint keeps besides the weights (its ``extra``): ``resume`` and
    ``finished_run`` read it back."""
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
