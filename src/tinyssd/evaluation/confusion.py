"""What a detector gets right and wrong at one score threshold: per-class precision and
recall, the confusion matrix, and precision / recall / F1 against the threshold per class.

Precision and recall use the VOC matching of ``voc.py`` (IoU 0.5, per class, in
score order; a detection on a difficult or crowd box is ignored), so pooled over
the classes they are the points of ``evaluate()``'s ``threshold_curves``.

The confusion matrix matches across classes, as Ultralytics' does, so that a box
found with the wrong class shows off the diagonal. Worked example (one image,
classes 1 and 2, threshold 0.5)::

    ground truth   A: class 1 at (0, 0, 10, 10)     B: class 2 at (20, 0, 30, 10)
    detections     a: class 1, 0.9, on A (IoU 1)    b: class 1, 0.8, on B (IoU 1)
                   c: class 2, 0.7, nowhere         d: class 2, 0.3, on A (below 0.5 score)
    a-A and b-B are matched: a counts at [1, 1], b (said 1, was 2) at [1, 2];
    c matches nothing: a false detection at [2, 0]; d is below the threshold.

                   true: background  1  2
    predicted background         0   0  0
              1                  0   1  1
              2                  1   0  0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .coco import flatten_inputs, pair_iou
from .threshold import threshold_curves
from .voc import IOU_THRESHOLD, voc_outcomes

__all__ = ["class_precision_recall", "class_threshold_curves", "confusion_matrix"]


def class_precision_recall(
    predictions: Sequence[Mapping[str, object]],
    targets: Sequence[Mapping[str, object]],
    score_threshold: float,
) -> dict[int, dict[str, float]]:
    """Per class, precision and recall of the detections scoring >= ``score_threshold``.

    Args:
        predictions, targets: per-image dicts as ``evaluate`` takes (xyxy pixels).
    Returns:
        label -> ``precision``, ``recall`` (floats), ``true_pos``, ``false_pos``,
        ``num_gt`` (ints; difficult and crowd boxes not counted), for every label that
        has a ground-truth box or a detection. Precision is 0.0 where nothing is kept
        (as Ultralytics reports it), recall 0.0 where the class has no ground truth.
    """
    inputs = flatten_inputs(predictions, targets)
    true_pos, ignored = voc_outcomes(inputs)
    kept = (inputs.dt_score >= score_threshold) & ~ignored
    counted_gt = ~(inputs.gt_difficult | inputs.gt_crowd)
    out: dict[int, dict[str, float]] = {}
    for label in inputs.labels.tolist():
        mine = kept & (inputs.dt_label == label)
        tp = int(np.count_nonzero(mine & true_pos))
        fp = int(np.count_nonzero(mine)) - tp
        num_gt = int(np.count_nonzero(counted_gt & (inputs.gt_label == label)))
        out[int(label)] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / num_gt if num_gt else 0.0,
            "true_pos": tp,
            "false_pos": fp,
            "num_gt": num_gt,
        }
    return out


def class_threshold_curves(
    predictions: Sequence[Mapping[str, object]],
    targets: Sequence[Mapping[str, object]],
    points: int = 101,
) -> dict[int, dict[str, np.ndarray]]:
    """Per class with ground truth, ``threshold_curves`` of its own detections: precision,
    recall and F1 at ``points`` thresholds in [0, 1] (Ultralytics' per-class P, R, F1 curves)."""
    inputs = flatten_inputs(predictions, targets)
    true_pos, ignored = voc_outcomes(inputs)
    counted_gt = ~(inputs.gt_difficult | inputs.gt_crowd)
    out = {}
    for label in inputs.labels.tolist():
        num_gt = int(np.count_nonzero(counted_gt & (inputs.gt_label == label)))
        if num_gt:
            mine = (inputs.dt_label == label) & ~ignored
            out[int(label)] = threshold_curves(
                inputs.dt_score[mine], true_pos[mine], num_gt, points
            )
    return out


def confusion_matrix(
    predictions: Sequence[Mapping[str, object]],
    targets: Sequence[Mapping[str, object]],
    num_classes: int,
    score_threshold: float,
    iou_threshold: float = IOU_THRESHOLD,
) -> np.ndarray:
    """Counts of (predicted class, true class) over the images (module docstring's example).

    Per image, the detections scoring >= ``score_threshold`` are matched one to one
    to the ground-truth boxes whatever their classes, greedily by IoU (highest
    first, pairs with IoU >= ``iou_threshold``). A matched pair counts at
    ``[predicted, true]``; a box no detection matched at ``[0, true]`` (missed); a
    detection that matched no box at ``[predicted, 0]`` (a false detection). A
    detection matched to a difficult or crowd box is not counted, nor is such a box.

    Args:
        predictions, targets: per-image dicts as ``evaluate`` takes (xyxy pixels),
            labels in 1..``num_classes``.
    Returns:
        ``np.ndarray[K, K]`` int64, K = num_classes + 1; rows predicted, columns true,
        index 0 the background.
    """
    inputs = flatten_inputs(predictions, targets)
    size = num_classes + 1
    for name, labels in (("predictions", inputs.dt_label), ("targets", inputs.gt_label)):
        if len(labels) and not (1 <= labels.min() and labels.max() <= num_classes):
            raise ValueError(f"{name}: labels must be in 1..{num_classes}")
    matrix = np.zeros((size, size), np.int64)
    kept = inputs.dt_score >= score_threshold
    ignored_gt = inputs.gt_difficult | inputs.gt_crowd
    for image in np.union1d(inputs.dt_image, inputs.gt_image).tolist():
        dets = np.flatnonzero(kept & (inputs.dt_image == image))
        gts = np.flatnonzero(inputs.gt_image == image)
        det_of_gt, gt_of_det = _greedy_iou_pairs(
            inputs.dt_xywh[dets], inputs.gt_xywh[gts], iou_threshold
        )
        for g, d in zip(gts.tolist(), det_of_gt.tolist(), strict=True):
            if not ignored_gt[g]:
                predicted = inputs.dt_label[dets[d]] if d >= 0 else 0
                matrix[predicted, inputs.gt_label[g]] += 1
        for d, g in zip(dets.tolist(), gt_of_det.tolist(), strict=True):
            if g < 0:
                matrix[inputs.dt_label[d], 0] += 1
    return matrix


def _greedy_iou_pairs(
    dt_xywh: np.ndarray, gt_xywh: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs by descending IoU (ties: lower detection, then box index first).

    Returns:
        det_of_gt (G,), gt_of_det (D,): the partner's index, -1 for none.
    """
    det_of_gt = np.full(len(gt_xywh), -1, np.int64)
    gt_of_det = np.full(len(dt_xywh), -1, np.int64)
    det_grid, gt_grid = np.meshgrid(np.arange(len(dt_xywh)), np.arange(len(gt_xywh)), indexing="ij")
    det, gt = det_grid.ravel(), gt_grid.ravel()  # every (detection, box) pair
    iou = pair_iou(dt_xywh[det], gt_xywh[gt], False)
    candidates = np.flatnonzero(iou >= iou_threshold)
    for p in candidates[np.lexsort((gt[candidates], det[candidates], -iou[candidates]))]:
        if det_of_gt[gt[p]] < 0 and gt_of_det[det[p]] < 0:
            det_of_gt[gt[p]], gt_of_det[det[p]] = det[p], gt[p]
    return det_of_gt, gt_of_det
