"""The run folder: what a training writes, and the rules that keep it from overwriting.

A run writes only into a folder it owns: a new one (``runs/train``,
``runs/train2``, ... as Ultralytics names them), an empty one, its own when
resumed, one where a run stopped before its first checkpoint, or an existing
one the user allowed with ``--exist-ok``. A lock file
stops two trainings from writing into one folder at once.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError

from ..checkpoint import save_checkpoint
from ..errors import CheckpointError, UsageError
from ..files import atomic_path, atomic_write
from ..options import DEFAULT_THRESHOLD
from .tensorboard import TensorBoardLog

if TYPE_CHECKING:
    from ..evaluation.report import EvalReport

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


def stopped_before_checkpoint(path: Path) -> bool:
    """``path`` is a run folder (its ``config.json``) that holds no checkpoint yet."""
    return (path / "config.json").is_file() and not any(path.glob("*.safetensors"))


def check_out(path: str | Path, own: bool) -> None:
    """UsageError when a training may not write into ``path``: a file, or a folder that is
    not empty and not its own (``own``: resumed or ``--exist-ok``; a run that stopped
    before its first checkpoint is its own too), or one another training holds.

    Creates nothing: every process of a distributed run checks before joining the process
    group, so that all of them stop with the same line.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    if not path.is_dir():
        return
    own = own or stopped_before_checkpoint(path)
    if not own and any(p.name != LOCK_NAME for p in path.iterdir()):
        raise UsageError(
            f"--out {path}: folder exists and is not empty "
            "(pick a new --out, --resume it, or pass --exist-ok)"
        )
    if (path / LOCK_NAME).is_file():
        # shared: the processes of one run may all check at once; closing releases it
        with open(path / LOCK_NAME) as lock:
            _lock(lock, path, fcntl.LOCK_SH)


def _lock(lock: IO, path: Path, kind: int) -> None:
    """``flock`` the run folder's lock file (``lock``, open) without waiting; UsageError
    when another training holds it."""
    try:
        fcntl.flock(lock, kind | fcntl.LOCK_NB)
    except OSError:
        raise UsageError(f"--out {path}: another training is writing there") from None


class RunFolder:
    """The run folder of one training; only the main process writes to it."""

    def __init__(self, path: Path, own: bool, main: bool = True) -> None:
        self.path = Path(path)
        self.main = main
        self.config: dict[str, Any] = {}  # config.json, as written by ``start``
        self.tensorboard: TensorBoardLog | None = None  # --tensorboard: see ``start``
        self._lock: IO | None = None
        if not main:
            return
        if self.path.is_dir() and not own and stopped_before_checkpoint(self.path):
            log.info(
                "--out %s: a run stopped there before its first checkpoint; starting again", path
            )
        check_out(self.path, own)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.path / LOCK_NAME, "a")  # noqa: SIM115 - held for the run
        except OSError as e:
            raise UsageError(f"--out {self.path}: cannot write there ({e.strerror})") from None
        try:
            _lock(self._lock, self.path, fcntl.LOCK_EX)
        except UsageError:
            self._lock.close()
            self._lock = None
            raise

    def start(self, config: dict[str, Any], tensorboard: bool = False) -> None:
        """``config.json``: the run's config, also stored in every checkpoint; with
        ``tensorboard``, event files in the run folder (``tinyssd[tensorboard]``)."""
        self.config = config
        if self.main:
            atomic_write(self.path / "config.json", json.dumps(config, indent=1))
            if tensorboard:
                self.tensorboard = TensorBoardLog(self.path)

    def log_epoch(self, history: list[dict[str, Any]], epochs: int, draw: bool = True) -> None:
        """The last epoch's summary line; ``metrics.csv`` of all of them, and ``curves.png``
        when ``draw`` (the epochs with a val evaluation: a drawing takes 0.2 s)."""
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
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(row)
        if draw:
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
        _save_checkpoint(self.path / "last.safetensors", *args)
        if best or not (self.path / "best.safetensors").exists():
            _save_checkpoint(self.path / "best.safetensors", *args)

    def write_labels(self, dataset) -> Path | None:
        """``labels.png``: the training boxes per class, their centres and sizes."""
        if not self.main:
            return None
        from ..viz import write_labels_picture

        sized = [(r, r.size) for r in dataset.records if r.size]
        return write_labels_picture(sized, dataset.classes, self.path / "labels.png")

    def finish(
        self,
        model: torch.nn.Module,
        val_ds,
        device: torch.device,
        threshold: float = DEFAULT_THRESHOLD,
        extra: dict[str, Any] | None = None,
    ) -> EvalReport | None:
        """The report of ``model`` on val (logged; ``results.json`` with ``extra``, the
        confusion matrix, the P/R/F1 curves, ``val_predictions.png``), P and R counted at
        ``threshold``; the list of files; release the folder. Returns the report (None
        without val images, or on other processes than the main one)."""
        report = None
        try:
            if self.main:
                report = self._report(model, val_ds, device, threshold, extra)
                files = sorted(p.name for p in self.path.iterdir() if not p.name.startswith("."))
                log.info("run folder %s: %s", self.path, ", ".join(files))
        finally:
            self.close()
        return report

    def _report(
        self, model, val_ds, device: torch.device, threshold: float, extra: dict | None
    ) -> EvalReport | None:
        from ..evaluation.plot import format_class_table
        from ..evaluation.report import build_report, write_report
        from ..inference import predict_dataset

        if not len(val_ds):
            atomic_write(self.path / "results.json", json.dumps(extra or {}, indent=1))
            log.info("no val images: results.json holds the training metrics only")
            return None
        predictions = predict_dataset(model, val_ds, 32, device)
        targets = [val_ds.targets_in_pixels(i) for i in range(len(val_ds))]
        report = build_report(predictions, targets, val_ds.classes, threshold)
        log.info("%s", format_class_table(report.rows, threshold))
        write_report(report, self.path, extra)
        path = self.path / "val_predictions.png"
        save_val_predictions(val_ds, predictions, path, threshold=threshold)
        if self.tensorboard is not None:
            self.tensorboard.add_picture("val_predictions", path)
        return report

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _save_checkpoint(path: Path, *args: Any) -> None:
    """``save_checkpoint``, whose failures to write are OSErrors naming ``path``.

    safetensors writes the file itself and reports a full disk as a SafetensorError
    ("... No space left on device (os error 28)"): its errno is read back from the text.
    """
    try:
        save_checkpoint(path, *args)
    except SafetensorError as e:
        code = re.search(r"\(os error (\d+)\)", str(e))
        if code is None:
            raise CheckpointError(f"{path}: cannot write the checkpoint ({e})") from None
        errno = int(code.group(1))
        raise OSError(errno, os.strerror(errno), str(path)) from None


def write_metrics(path: Path, rows: list[dict]) -> None:
    """``metrics.csv``: one row per epoch, the columns of METRIC_COLUMNS."""
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
    atomic_write(path, text.getvalue())


def save_val_predictions(
    dataset,
    predictions: list[dict[str, torch.Tensor]],
    path: Path,
    count: int = 8,
    threshold: float = DEFAULT_THRESHOLD,
) -> Path:
    """``val_predictions.png``: the first ``count`` val images, ground truth on the left,
    the predictions scoring >= ``threshold`` on the right, and a caption that says the
    threshold and, when nothing is drawn, why.

    ``predictions[i]``: the detections of ``dataset``'s image i in its pixels.
    """
    from ..data.base import read_image
    from ..viz import draw_detections, draw_ground_truth, save_pairs

    pairs, drawn, best = [], 0, 0.0
    for i, d in enumerate(predictions[:count]):
        image = read_image(dataset.records[i].image)
        target = dataset.targets_in_pixels(i)
        truth = draw_ground_truth(image, target["boxes"], target["labels"], dataset.classes)
        keep = d["scores"] >= threshold
        boxes, scores, labels = d["boxes"][keep], d["scores"][keep], d["labels"][keep]
        drawn += len(scores)
        best = max([best, *d["scores"].tolist()])
        pairs.append((truth, draw_detections(image, boxes, scores, labels, dataset.classes)))
    caption = val_caption(len(pairs), drawn, threshold, best)
    with atomic_path(path) as tmp:
        save_pairs(pairs, tmp, ("ground truth", f"predictions, score >= {threshold:.3f}"), caption)
    return path


def val_caption(images: int, drawn: int, threshold: float, best_score: float) -> str:
    """What ``val_predictions.png`` says under its pictures: the threshold, and why
    nothing is drawn when nothing is (``best_score``: the highest score predicted)."""
    caption = (
        f"{images} val images. Right: the {drawn} predictions with score >= {threshold:.3f} "
        "(the model's threshold: F1-optimal on val; predict and serve use it too)."
    )
    if not drawn:
        caption += (
            f" No prediction reaches it on these images (highest score {best_score:.3f}):"
            " the model is undertrained or the threshold too high (try --threshold)."
        )
    return caption


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"
