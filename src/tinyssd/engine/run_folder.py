"""The run folder: what a training writes, and the rules that keep it from overwriting.

A run writes only into a folder it owns: a new one (``runs/train``,
``runs/train2``, ... as Ultralytics names them), an empty one, its own when
resumed, or an existing one the user allowed with ``--exist-ok``. A lock file
stops two trainings from writing into one folder at once.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
from pathlib import Path
from typing import IO, Any

import torch

from ..checkpoint import save_checkpoint
from ..errors import UsageError
from ..files import atomic_path, atomic_write
from ..options import DEFAULT_THRESHOLD

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

LOCK_NAME = ".tinyssd.lock"


def new_run_dir(parent: str | Path = "runs", name: str = "train") -> Path:
    """The first of ``runs/train``, ``runs/train2``, ... that does not exist yet (not created)."""
    parent = Path(parent)
    i = 1
    while (parent / (name if i == 1 else f"{name}{i}")).exists():
        i += 1
    return parent / (name if i == 1 else f"{name}{i}")


class RunFolder:
    """The run folder of one training; only the main process writes to it."""

    def __init__(self, path: Path, own: bool, main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        self.config: dict[str, Any] = {}  # config.json, as written by ``start``
        self._lock: IO | None = None
        if not main:
            return
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path}: exists and is not a folder")
        if self.path.is_dir() and not own and any(p.name != LOCK_NAME for p in self.path.iterdir()):
            raise UsageError(
                f"--out {self.path}: folder exists and is not empty "
                "(pick a new --out, --resume it, or pass --exist-ok)"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK_NAME, "a")  # noqa: SIM115 - held for the run
        except OSError as e:
            raise UsageError(f"--out {self.path}: cannot write there ({e.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise UsageError(f"--out {self.path}: another training is writing there") from None

    def start(self, config: dict[str, Any]) -> None:
        """``config.json``: the run's config, also stored in every checkpoint."""
        self.config = config
        if self.main:
            atomic_write(self.path / "config.json", json.dumps(config, indent=1))

    def log_epoch(self, history: list[dict[str, Any]], epochs: int) -> None:
        """The last epoch's summary line; ``metrics.csv`` and ``curves.png`` of all of them."""
        from ..viz import plot_curves

        row = history[-1]
        log.info(
            "epoch %d/%d: loss %.4f, class err %.2e, bbox mae %.2e, val AP50 %s, AP %s, "
            "%.1f s, %.1f images/s",
            row["epoch"],
            epochs,
            row["loss"],
            row["class_err"],
            row["bbox_mae"],
            _fmt(row.get("val_AP50")),
            _fmt(row.get("val_AP")),
            row["seconds"],
            row["images_per_s"],
        )
        write_metrics(self.path / "metrics.csv", history)
        with atomic_path(self.path / "curves.png") as tmp:
            plot_curves(history, tmp)

    def save(
        self,
        weights: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        epoch: int,
        extra: dict[str, Any],
        best: bool,
        training_weights: torch.nn.Module | None = None,
    ) -> None:
        """``last.safetensors``, and ``best.safetensors`` when ``best`` (or none exists yet),
        with ``start``'s config.

        ``weights`` are those to predict with (``model.``: the EMA when kept);
        ``training_weights``, when they differ, the optimiser's own (``train.``).
        """
        if not self.main:
            return
        args = (weights, self.config, optimizer, epoch, extra, training_weights)
        save_checkpoint(self.path / "last.safetensors", *args)
        if best or not (self.path / "best.safetensors").exists():
            save_checkpoint(self.path / "best.safetensors", *args)

    def finish(self, model: torch.nn.Module, val_ds, device: torch.device) -> None:
        """``val_predictions.png``; release the folder."""
        if self.main:
            if len(val_ds):
                save_val_predictions(model, val_ds, self.path / "val_predictions.png", device)
            log.info("run folder: %s", self.path)
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.csv``: one row per epoch, the columns of METRIC_COLUMNS."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
    atomic_write(path, text.getvalue())


def save_val_predictions(
    model: torch.nn.Module, dataset, path: Path, device: torch.device, count: int = 8
) -> None:
    """A grid of val images with their boxes of score >= DEFAULT_THRESHOLD drawn."""
    from ..data.base import read_image
    from ..inference import predict_dataset
    from ..viz import draw_detections, save_grid

    subset_idx = list(range(min(count, len(dataset))))
    dets = predict_dataset(model, dataset, 32, device, indices=subset_idx)
    pictures = []
    for i, d in zip(subset_idx, dets, strict=True):
        keep = d["scores"] >= DEFAULT_THRESHOLD
        image = read_image(dataset.records[i].image)
        boxes, scores, labels = d["boxes"][keep], d["scores"][keep], d["labels"][keep]
        pictures.append(draw_detections(image, boxes, scores, labels, dataset.classes))
    with atomic_path(path) as tmp:
        save_grid(pictures, tmp)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
