"""Val AP with and without SSD augmentation at equal epochs, on the bananas and the synthetic set.

    python bench/augment.py [--epochs 20] [--synthetic-epochs 20] [--out bench/results/augment.json]

Prints JSON: for each data set and each ``--augment`` setting (``none``, ``ssd``)
the final and best val AP50 / COCO AP, the final training class error and
bbox MAE, and the training minutes. Everything else is the chapter's recipe
(``tinyssd train`` defaults, seed 0). The real bananas are skipped when
``../shared/data/banana-detection`` is absent; the synthetic set is the one
``tinyssd train`` uses without ``--data`` (1000 train, 100 val, 3 classes).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import BANANAS, emit, train_metrics

from tinyssd.data.synthetic import ensure_synthetic

SETTINGS = ("none", "ssd")


def run(data: Path, augment: str, epochs: int) -> dict:
    rows, _ = train_metrics(data=str(data), epochs=epochs, augment=augment)
    last = rows[-1]
    return {
        "epochs": len(rows),
        "final_AP50": last["val_AP50"],
        "final_AP": last["val_AP"],
        "best_AP50": max(r["val_AP50"] for r in rows),
        "best_AP": max(r["val_AP"] for r in rows),
        "final_train_class_err": last["class_err"],
        "final_train_bbox_mae": last["bbox_mae"],
        "train_minutes": sum(r["seconds"] for r in rows) / 60,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20, help="epochs on the bananas")
    p.add_argument("--synthetic-epochs", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    sets = {"synthetic": (ensure_synthetic(), a.synthetic_epochs)}
    if BANANAS.is_dir():
        sets = {"bananas": (BANANAS, a.epochs), **sets}
    result = {}
    for name, (root, epochs) in sets.items():
        result[name] = {aug: run(root, aug, epochs) for aug in SETTINGS}
    if not BANANAS.is_dir():
        result["bananas"] = {"skipped": f"{BANANAS} not found"}
    emit(result, a.out)


if __name__ == "__main__":
    main()
