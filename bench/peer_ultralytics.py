"""The peer: Ultralytics YOLOv8n trained from scratch on the same data, scored by tinyssd.

    pip install -e '.[bench]'
    python bench/peer_ultralytics.py --data ../shared/data/banana-detection --epochs 20

Converts the data set to YOLO layout (``tinyssd data convert``), trains
``yolov8n.yaml`` (random init: nothing downloaded; offline, plots off, 2 CPU
threads, its default recipe and data loader) at the same image size and epochs, predicts the
same val split (conf 0.001, as its own mAP validation does) and scores it with
``tinyssd.evaluation.evaluate``. Prints JSON: AP, AP50, AP75 and training
minutes (its training loop, validation off). Ultralytics is a benchmark-only
extra, never a tinyssd dependency.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from _common import emit


class PeerUnavailable(RuntimeError):
    """Ultralytics is not installed (``pip install -e '.[bench]'``)."""


def train_and_score(data: Path, epochs: int, image_size: int = 256, batch: int = 32) -> dict:
    """Train YOLOv8n from scratch on ``data``'s train split; val COCO metrics and minutes."""
    import torch

    # Importing ultralytics sets OMP_NUM_THREADS=1 (torch then starts with one thread if it
    # was not imported yet), and its select_device() sets torch's threads to cores - 1 (1
    # here) for the rest of the process. Train it with this process's threads (2 here, as
    # the peer figures) and give the rows after it the same.
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no hub, no update checks, no telemetry
    try:
        from ultralytics import YOLO, settings
        from ultralytics.utils import torch_utils
    except ImportError as e:
        raise PeerUnavailable(f"{e}; pip install -e '.[bench]'") from None
    finally:
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)

    settings.update({"sync": False})
    torch_utils.NUM_THREADS = threads
    try:
        return _train_and_score(YOLO, data, epochs, image_size, batch)
    finally:
        torch.set_num_threads(threads)


def _train_and_score(YOLO, data: Path, epochs: int, image_size: int, batch: int) -> dict:
    import torch

    from tinyssd.data import load_split
    from tinyssd.data.convert import convert
    from tinyssd.evaluation import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        yolo_root = convert(data, to="yolo", out=Path(tmp) / "yolo")
        model = YOLO("yolov8n.yaml")
        t0 = time.perf_counter()
        model.train(
            data=str(yolo_root / "data.yaml"),
            epochs=epochs,
            imgsz=image_size,
            batch=batch,
            device="cpu",  # Ultralytics loads data in the training process on a CPU
            plots=False,
            val=False,
            project=tmp,
            name="run",
            exist_ok=True,
            seed=0,
            verbose=False,
        )
        minutes = (time.perf_counter() - t0) / 60
        threads = torch.get_num_threads()  # what its training ran with
        classes = load_split(data, "train").classes
        val = load_split(data, "val").with_classes(classes)
        names = model.names
        predictions = []
        for rec in val.records:
            r = model.predict(
                str(rec.image), conf=0.001, imgsz=image_size, max_det=300, verbose=False
            )[0]
            labels = [classes.index(names[int(c)]) + 1 for c in r.boxes.cls.tolist()]
            predictions.append(
                {
                    "boxes": r.boxes.xyxy.float().cpu(),
                    "scores": r.boxes.conf.float().cpu(),
                    "labels": torch.tensor(labels, dtype=torch.int64),
                }
            )
        targets = [
            {"boxes": r.boxes, "labels": r.labels, "difficult": r.difficult, "iscrowd": r.iscrowd}
            for r in val.records
        ]
        metrics = evaluate(predictions, targets)
    return {
        "epochs": epochs,
        "threads": threads,
        "train_minutes": minutes,
        "wall_minutes": minutes,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--out")
    a = p.parse_args()
    emit(train_and_score(Path(a.data), a.epochs, a.image_size, a.batch), a.out)


if __name__ == "__main__":
    main()
