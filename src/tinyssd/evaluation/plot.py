"""Reading ``evaluate``'s result: per-class precision-recall curves, and a text table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from . import SUMMARY_KEYS


def _class_name(classes: Sequence[str], label: int) -> str:
    """``classes[label - 1]``, or ``class <label>`` for a label the list does not name."""
    return classes[label - 1] if 1 <= label <= len(classes) else f"class {label}"


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
