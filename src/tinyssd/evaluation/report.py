"""The report of a trained detector on a split: what ``tinyssd train`` ends with and
``tinyssd eval`` prints and writes.

    report = build_report(predictions, targets, classes, threshold)   # pure: numbers only
    files = write_report(report, "runs/train")   # results.json + the pictures
    print(format_class_table(report.rows, report.threshold))

``results.json`` holds the per-class table (class, images, instances, precision
and recall at the model's score threshold, AP50, AP), COCO's and VOC's numbers,
the confusion matrix, and whatever the caller adds (a training's final and best
epochs). The pictures are those Ultralytics users look at first:
``confusion_matrix.png``, ``P_curve.png``, ``R_curve.png``, ``F1_curve.png``,
``PR_curve.png``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_path, atomic_write
from . import SUMMARY_KEYS, evaluate, to_json
from .confusion import class_precision_recall, class_threshold_curves, confusion_matrix

__all__ = ["EvalReport", "build_report", "write_report"]

REPORT_FILES = (
    "results.json",
    "confusion_matrix.png",
    "P_curve.png",
    "R_curve.png",
    "F1_curve.png",
    "PR_curve.png",
)


@dataclass
class EvalReport:
    """A detector's numbers on one split at one score threshold."""

    threshold: float  # the score threshold P, R and the confusion matrix are counted at
    rows: list[dict[str, Any]]  # per class, then "all": class images instances P R AP50 AP
    result: dict  # evaluate()'s full result
    matrix: np.ndarray  # (C+1, C+1): rows predicted, columns true, 0 = background
    class_curves: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)


def build_report(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    threshold: float,
    result: dict | None = None,
) -> EvalReport:
    """The report of ``predictions`` (every score >= 0.01, as mAP needs) against ``targets``
    (``evaluate``'s per-image dicts), P, R and the matrix at ``threshold``.

    ``result``: ``evaluate(predictions, targets)`` when already computed. Rows: one per
    class of ``classes`` (label i + 1), then ``all`` (every image and box; P and R pooled
    over the classes, as the F1-optimal threshold is; AP50 and AP the means).
    """
    result = result if result is not None else evaluate(predictions, targets)
    pr = class_precision_recall(predictions, targets, threshold)
    images: dict[int, int] = {}
    for t in targets:
        for label in set(np.asarray(t["labels"]).reshape(-1).tolist()):
            images[int(label)] = images.get(int(label), 0) + 1
    rows = []
    for label, name in enumerate(classes, start=1):
        counts = pr.get(label, {"precision": 0.0, "recall": 0.0, "num_gt": 0})
        per_class = result["per_class"].get(label, {"AP50": -1.0, "AP": -1.0})
        rows.append(
            {
                "class": name,
                "images": images.get(label, 0),
                "instances": counts["num_gt"],
                "precision": counts["precision"] if counts["num_gt"] else -1.0,
                "recall": counts["recall"] if counts["num_gt"] else -1.0,
                "AP50": per_class["AP50"],
                "AP": per_class["AP"],
            }
        )
    tp = sum(c["true_pos"] for c in pr.values())
    kept = tp + sum(c["false_pos"] for c in pr.values())
    num_gt = sum(c["num_gt"] for c in pr.values())
    rows.append(
        {
            "class": "all",
            "images": len(targets),
            "instances": num_gt,
            "precision": tp / kept if kept else 0.0,
            "recall": tp / num_gt if num_gt else 0.0,
            "AP50": result["AP50"],
            "AP": result["AP"],
        }
    )
    matrix = confusion_matrix(predictions, targets, len(classes), threshold)
    curves = class_threshold_curves(predictions, targets)
    return EvalReport(threshold, rows, result, matrix, curves, list(classes))


def write_report(
    report: EvalReport, folder: str | Path, extra: Mapping[str, Any] | None = None
) -> list[Path]:
    """``results.json`` (the rows, the summary numbers, the matrix and ``extra``) and the
    pictures, each written atomically into ``folder``; returns their paths."""
    from .plot import plot_confusion_matrix, plot_pr_curves, plot_threshold_curves

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = report.result
    written = []
    with atomic_path(folder / "confusion_matrix.png") as tmp:
        plot_confusion_matrix(report.matrix, report.classes, tmp, report.threshold)
    written.append(folder / "confusion_matrix.png")
    pooled = report.rows[-1]
    p, r = pooled["precision"], pooled["recall"]
    at_threshold = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
    written += plot_threshold_curves(
        result["threshold_curves"],
        report.class_curves,
        report.classes,
        folder,
        report.threshold,
        at_threshold,
    )
    with atomic_path(folder / "PR_curve.png") as tmp:
        plot_pr_curves(result, report.classes, tmp)
    written.append(folder / "PR_curve.png")
    summary = {key: result[key] for key in (*SUMMARY_KEYS, "VOC07_mAP", "VOC_mAP")}
    payload = {
        "threshold": report.threshold,
        "iou_threshold": 0.5,
        "classes": report.rows,
        "metrics": {**summary, "f1": result["f1"], "f1_threshold": result["f1_threshold"]},
        "confusion_matrix": {
            "labels": ["background", *report.classes],
            "rows": "predicted",
            "columns": "true",
            "matrix": report.matrix.tolist(),
        },
        **(extra or {}),
    }
    atomic_write(folder / "results.json", json.dumps(to_json(payload), indent=1))
    return [folder / "results.json", *written]
