"""What a training tells its user: the header at the start, the progress where stderr is a
log file, and the result ``tinyssd.train`` returns.

    with default_logging():               # Python users see the epochs' lines too
        log.info("%s", training_header(...))
        for batch in progress_bar(batches, total, "epoch 1/40"): ...
    return TrainResult(run_folder, final_row, best_row, class_rows, threshold)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("tinyssd")

LOG_EVERY_S = 10.0  # a progress line this often when stderr is not a terminal
MAX_LINE = 300  # no progress line is longer


@dataclass(frozen=True)
class TrainResult:
    """What ``tinyssd.train`` returns: the run folder and what the run measured.

    It stands for the folder where a path does (``str(result)``, ``os.fspath``,
    ``result / "metrics.csv"``, ``tinyssd.load(result)``).
    """

    path: Path  # the run folder
    final: dict[str, Any] = field(default_factory=dict)  # the last epoch's metrics row
    best: dict[str, Any] = field(default_factory=dict)  # the epoch of the best val AP
    classes: list[dict[str, Any]] = field(default_factory=list)  # results.json's table
    threshold: float | None = None  # the score threshold stored with the best weights

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __truediv__(self, other: str | os.PathLike) -> Path:
        return self.path / other


@contextlib.contextmanager
def default_logging() -> Iterator[None]:
    """INFO lines of the ``tinyssd`` logger on stderr while the block runs, when nothing
    is configured (no handler on it or the root logger): what a script calling
    ``tinyssd.train`` sees without a ``logging.basicConfig``. Under the CLI (which
    configures logging) nothing is added, so no line is printed twice."""
    logger = logging.getLogger("tinyssd")
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def training_header(
    model_name: str,
    model: torch.nn.Module,
    image_size: int,
    train_ds,
    val_ds,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> str:
    """Device, precision, threads, model and parameters, input size, and the images and
    boxes per class of train and val, with a warning when val holds training images."""
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        f"training {model_name} ({parameters:,} parameters, {image_size} px input) on "
        f"{device}, {precision.get(autocast_dtype, str(autocast_dtype))}, "
        f"{torch.get_num_threads()} threads",
        f"train: {len(train_ds)} images, val: {len(val_ds)} images",
    ]
    counts = [_boxes_per_class(ds) for ds in (train_ds, val_ds)]
    width = max([len("class"), *map(len, train_ds.classes)])
    lines.append(f"  {'class':<{width}} {'train boxes':>11} {'val boxes':>9}")
    for label, name in enumerate(train_ds.classes, start=1):
        train_n, val_n = (c.get(label, 0) for c in counts)
        lines.append(f"  {name:<{width}} {train_n:>11} {val_n:>9}")
    shared = {r.image for r in train_ds.records} & {r.image for r in val_ds.records}
    if shared:
        lines.append(
            f"warning: {len(shared)} of {len(val_ds)} val images are training images (the "
            "same files read as both splits): val AP measures memorisation, not detection "
            "of new images"
        )
    return "\n".join(lines)


def _boxes_per_class(dataset) -> dict[int, int]:
    counts: dict[int, int] = {}
    for rec in dataset.records:
        for label in rec.labels.tolist():
            counts[int(label)] = counts.get(int(label), 0) + 1
    return counts


class LogProgress:
    """A progress bar for a log file: one line every ``LOG_EVERY_S`` seconds (and at the
    end), never a carriage return, at most ``MAX_LINE`` characters."""

    def __init__(self, iterable: Iterable, total: int, desc: str) -> None:
        self.iterable, self.total, self.desc = iterable, total, desc
        self.postfix: dict[str, Any] = {}

    def __iter__(self) -> Iterator:
        start = last = time.monotonic()
        done = logged = 0
        for done, item in enumerate(self.iterable, start=1):  # noqa: B007 - counted below
            yield item
            now = time.monotonic()
            if now - last >= LOG_EVERY_S:
                last, logged = now, done
                self._line(done, now - start)
        if done and logged != done:
            self._line(done, time.monotonic() - start)

    def _line(self, done: int, seconds: float) -> None:
        values = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
        line = f"{self.desc}: step {done}/{self.total}, {seconds:.0f} s" + (
            f", {values}" if values else ""
        )
        log.info("%s", line.replace("\r", " ").replace("\n", " ")[:MAX_LINE])

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable, total: int, desc: str, show: bool):
    """tqdm on a terminal; :class:`LogProgress` when stderr is a file or a pipe; a
    silent pass-through when ``show`` is False."""
    from tqdm import tqdm

    if show and not sys.stderr.isatty():
        return LogProgress(iterable, total, desc)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not show,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
