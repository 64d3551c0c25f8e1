"""The score threshold a user can rely on: precision, recall and F1 against it.

A detector's scores are only comparable within one model, so the threshold
that separates its good boxes from its bad ones is measured, not assumed: at
the end of training, the threshold that maximises F1 on val (IoU 0.5, all
classes pooled) is stored in the checkpoint and is the default of ``predict``,
``serve``, video and the val pictures.

Example (5 detections, 4 ground-truth boxes)::

    scores   = [0.9, 0.8, 0.6, 0.4, 0.3]
    true_pos = [  1,   1,   0,   1,   0]
    at 0.9: P 1/1 R 1/4 F1 0.40;  at 0.8: P 2/2 R 2/4 F1 0.67
    at 0.6: P 2/3 R 2/4 F1 0.57;  at 0.4: P 3/4 R 3/4 F1 0.75  <- best
    at 0.3: P 3/5 R 3/4 F1 0.67
    best_f1_threshold(...) == (0.4, 0.75)
"""

from __future__ import annotations

import numpy as np

__all__ = ["best_f1_threshold", "f1_curve", "threshold_curves"]


def f1_curve(
    scores: np.ndarray, true_pos: np.ndarray, num_gt: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of keeping the detections scoring >= each distinct score.

    Args:
        scores (D,), true_pos (D,) bool: every detection's score and whether it is a true
            positive (ignored detections left out by the caller).
        num_gt: ground-truth boxes that count.
    Returns:
        thresholds (T,) descending distinct scores, precision (T,), recall (T,), f1 (T,).
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s = np.asarray(scores, np.float64)[order]
    tp = np.cumsum(np.asarray(true_pos, bool)[order])
    kept = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)  # end of a tie run
    s, tp, kept = s[last], tp[last], kept[last]
    precision = tp / np.maximum(kept, 1)
    recall = tp / max(num_gt, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).eps)
    return s, precision, recall, f1


def best_f1_threshold(scores: np.ndarray, true_pos: np.ndarray, num_gt: int) -> tuple[float, float]:
    """(threshold, F1) where F1 is largest; of equal F1 the lowest threshold (more recall).

    (0.0, 0.0) when there is no detection or no true positive.
    """
    thresholds, _, _, f1 = f1_curve(scores, true_pos, num_gt)
    if not len(f1) or f1.max() <= 0:
        return 0.0, 0.0
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds descend: the last is the lowest
    return float(thresholds[best]), float(f1[best])


def threshold_curves(
    scores: np.ndarray, true_pos: np.ndarray, num_gt: int, points: int = 101
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at ``points`` evenly spaced thresholds in [0, 1] (the
    curves Ultralytics users read: P-, R- and F1-confidence).

    Returns:
        ``threshold``, ``precision``, ``recall``, ``f1`` (points,) each; precision is 1
        where nothing is kept.
    """
    grid = np.linspace(0.0, 1.0, points)
    s = np.asarray(scores, np.float64)
    tp = np.asarray(true_pos, bool)
    order = np.argsort(s, kind="stable")
    s_sorted, tp_sorted = s[order], tp[order]
    tp_above = np.r_[np.cumsum(tp_sorted[::-1])[::-1], 0]  # true positives at index and above
    first = np.searchsorted(s_sorted, grid, side="left")  # first detection with score >= t
    kept = len(s) - first
    hits = tp_above[first]
    precision = np.where(kept > 0, hits / np.maximum(kept, 1), 1.0)
    recall = hits / max(num_gt, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).eps)
    return {"threshold": grid, "precision": precision, "recall": recall, "f1": f1}
