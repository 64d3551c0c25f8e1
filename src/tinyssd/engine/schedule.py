"""How long a run trains and when it looks at val: the epoch budget (``--epochs``,
``--min-steps``, ``--max-steps``), the EMA's ramp, the epochs that evaluate val
(``--val-interval``) and the early stop (``--stop-ap50``, ``--stop-ap``, ``--patience``).

    epochs = epochs_for(cfg, steps_per_epoch)
    for epoch in range(epochs):
        ...
        if validates(epoch + 1, epochs, cfg.val_interval):
            row |= validate(...)
        if should_stop(cfg, row, history):
            break
"""

from __future__ import annotations

import logging
import math

from ..config import VAL_EPOCHS, RunConfig

log = logging.getLogger("tinyssd")


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


def ema_ramp(total_steps: int) -> float:
    """The EMA's warm-up time constant in steps: a tenth of the run (10..2000), so that a
    300-step run and a 30,000-step one both average over their late weights."""
    return float(min(max(total_steps / 10, 10), 2000))


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
