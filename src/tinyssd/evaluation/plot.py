"""Reading ``evaluate``'s result: precision-recall and score-threshold curves, the confusion
matrix, and text tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import escape_control
from . import SUMMARY_KEYS


def _class_name(classes: Sequence[str], label: int) -> str:
    """``classes[label - 1]`` with control characters escaped (names come from checkpoints
    and data sets), or ``class <label>`` for a label the list does not name."""
    return escape_control(classes[label - 1]) if 1 <= label <= len(classes) else f"class {label}"


def _number(value: float) -> str:
    """Three decimals; ``-`` for pycocotools' -1 ("no such boxes")."""
    return f"{value:.3f}" if value > -1 else "-"


def plot_pr_curves(result: dict, classes: Sequence[str], path: str | Path) -> Path:
    """PNG of each class's precision-recall curve at IoU 0.5, its AP50 in the legend.

    The curves are pycocotools' interpolated precision at 101 recall points
    (``result["pr_curves"]``); classes without ground truth are left out.
    ``classes[i]`` names label ``i + 1``. Returns ``path``.
    """
    path = Path(path)
    fig = Figure(figsize=(6, 5))  # no pyplot: no global state, the Agg canvas
    ax = fig.add_subplot()
    for label, curve in sorted(result["pr_curves"].items()):
        ap50 = result["per_class"][label]["AP50"]
        if ap50 > -1:
            name = _class_name(classes, label)
            ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP50 {ap50:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title(f"Precision-recall at IoU 0.5 (mean AP50 {_number(result['AP50'])})")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="lower left", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def format_table(result: dict, classes: Sequence[str]) -> str:
    """Per-class rows (name, #gt, #det, AP50, AP, VOC07 AP), an overall row, the 12 COCO numbers.

    ``classes[i]`` names label ``i + 1``; ``-`` marks a class without ground truth.
    """
    per_class = result["per_class"]
    labels = sorted(set(range(1, len(classes) + 1)) | set(per_class))
    names = [_class_name(classes, label) for label in labels]
    width = max([len("class"), len("all"), *map(len, names)])
    header = f"{'class':<{width}} {'#gt':>7} {'#det':>8} {'AP50':>6} {'AP':>6} {'VOC07':>6}"
    lines = [header, "-" * len(header)]
    empty = {"num_gt": 0, "num_det": 0, "AP50": -1.0, "AP": -1.0, "VOC07_AP": -1.0}
    for label, name in zip(labels, names):
        row = per_class.get(label, empty)
        lines.append(
            f"{name:<{width}} {row['num_gt']:>7} {row['num_det']:>8} {_number(row['AP50']):>6} "
            f"{_number(row['AP']):>6} {_number(row['VOC07_AP']):>6}"
        )
    num_gt = sum(row["num_gt"] for row in per_class.values())
    num_det = sum(row["num_det"] for row in per_class.values())
    lines += [
        "-" * len(header),
        f"{'all':<{width}} {num_gt:>7} {num_det:>8} {_number(result['AP50']):>6} "
        f"{_number(result['AP']):>6} {_number(result['VOC07_mAP']):>6}",
        "",
        "COCO " + "  ".join(f"{key} {_number(result[key])}" for key in SUMMARY_KEYS[:6]),
        "COCO " + "  ".join(f"{key} {_number(result[key])}" for key in SUMMARY_KEYS[6:]),
        f"VOC  mAP (11-point) {_number(result['VOC07_mAP'])}  "
        f"mAP (all points) {_number(result['VOC_mAP'])}",
    ]
    return "\n".join(lines)


def plot_confusion_matrix(
    matrix: np.ndarray, classes: Sequence[str], path: str | Path, threshold: float
) -> Path:
    """PNG of ``confusion.confusion_matrix`` (rows predicted, columns true, index 0 the
    background), each column normalised to 1 as Ultralytics draws it, with the counts."""
    path = Path(path)
    names = ["background", *map(escape_control, classes)]
    totals = matrix.sum(axis=0, keepdims=True)
    shares = matrix / np.maximum(totals, 1)
    side = max(4.0, 0.7 * len(names) + 2.5)
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true column")
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set(xlabel="true", ylabel="predicted")
    if len(names) <= 30:  # counts stay readable
        for (row, col), count in np.ndenumerate(matrix):
            if count:
                colour = "white" if shares[row, col] > 0.5 else "black"
                ax.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=8)
    ax.set_title(f"Confusion matrix at score >= {threshold:.2f}, IoU 0.5")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


CURVE_FILES = {"precision": "P_curve.png", "recall": "R_curve.png", "f1": "F1_curve.png"}


def plot_threshold_curves(
    pooled: dict[str, np.ndarray],
    per_class: dict[int, dict[str, np.ndarray]],
    classes: Sequence[str],
    folder: str | Path,
    threshold: float,
    at_threshold: dict[str, float] | None = None,
) -> list[Path]:
    """``P_curve.png``, ``R_curve.png``, ``F1_curve.png`` in ``folder``: precision, recall and
    F1 against the score threshold, per class (thin) and all classes pooled (thick; the
    ``threshold_curves`` of ``evaluate``), the chosen ``threshold`` marked and the pooled
    values there (``at_threshold``: ``precision recall f1``, exact where the 101-point
    curves fall between; else read from the curves) in the legend.

    Written through ``atomic_path``; returns the paths.
    """
    from ..files import atomic_path

    written = []
    for key, name in CURVE_FILES.items():
        fig = Figure(figsize=(6, 4.5))
        ax = fig.add_subplot()
        for label, curve in sorted(per_class.items()):
            ax.plot(curve["threshold"], curve[key], lw=1, label=_class_name(classes, label))
        at = int(np.argmin(np.abs(pooled["threshold"] - threshold)))
        value = (at_threshold or {}).get(key, float(pooled[key][at]))
        title = {"precision": "Precision", "recall": "Recall", "f1": "F1"}[key]
        ax.plot(
            pooled["threshold"],
            pooled[key],
            lw=3,
            color="black",
            label=f"all classes: {value:.2f} at {threshold:.3f}",
        )
        ax.axvline(threshold, color="grey", ls="--", lw=1)
        ax.set(xlabel="score threshold", ylabel=title, xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{title} against the score threshold (IoU 0.5)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if key != "precision" else "lower right", fontsize="small")
        fig.tight_layout()
        path = Path(folder) / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        written.append(path)
    return written


def format_class_table(rows: Sequence[dict], threshold: float) -> str:
    """The report's table: one row per class and ``all`` (``report.class_rows``'s dicts:
    ``class images instances precision recall AP50 AP``), P and R at ``threshold``."""
    names = [escape_control(r["class"]) for r in rows]
    width = max([len("class"), *map(len, names)])
    header = (
        f"{'class':<{width}} {'images':>7} {'instances':>9} {'P':>6} {'R':>6} {'AP50':>6} {'AP':>6}"
    )
    lines = [header, "-" * len(header)]
    for r, name in zip(rows, names):
        if r["class"] == "all":
            lines.append("-" * len(header))
        lines.append(
            f"{name:<{width}} {r['images']:>7} {r['instances']:>9} "
            f"{_number(r['precision']):>6} {_number(r['recall']):>6} "
            f"{_number(r['AP50']):>6} {_number(r['AP']):>6}"
        )
    lines.append(f"P and R at score >= {threshold:.3f} (IoU 0.5); AP50 and AP: COCO's")
    return "\n".join(lines)
