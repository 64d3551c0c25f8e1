"""PASCAL VOC average precision at IoU 0.5: the 11-point (VOC2007) and all-point
(VOC2010+) definitions, with the devkit's matching rule.

Matching, per class, detections in descending score order (stable: ties keep
image order): a detection's candidate is the ground-truth box of its image and
class with the highest IoU (the first of equal ones), whether or not that box
is already taken. If that IoU is >= 0.5 and the box is "difficult" (or a COCO
crowd region), the detection is ignored, neither true nor false positive; if
the box is free it becomes a true positive and the box is taken; otherwise, or
below 0.5, a false positive. Unlike COCO, a detection whose best box is taken
does not fall back to its second best.

IoU is continuous (no +1 pixel as in the devkit's ``(x2 - x1 + 1)``), the same
arithmetic as the COCO metric, so AP50 and VOC AP see the same overlaps. The
11 recall points are ``np.arange(0, 1.1, 0.1)``, as in detectron2's and
py-faster-rcnn's ``voc_eval``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .coco import EvalInputs, pair_iou, same_group_pairs

IOU_THRESHOLD = 0.5


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """The devkit's ``voc_ap``: area under the precision envelope.

    Args:
        recall (N,), precision (N,): cumulative, detections in descending score order.
        use_07_metric: mean of the best precision at recall >= 0, 0.1, ..., 1
            (VOC2007); else the exact area under the monotone envelope (VOC2010+).

    Example: two boxes, detections TP, FP, TP give recall [.5, .5, 1] and
    precision [1, .5, 2/3]: all-point AP = .5 * 1 + .5 * 2/3 = 5/6; 11-point
    AP = (6 * 1 + 5 * 2/3) / 11 = 28/33.
    """
    if not len(recall):
        return 0.0
    if use_07_metric:
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, np.arange(0.0, 1.1, 0.1), side="left")
        best = np.where(at < len(recall), envelope[np.minimum(at, len(recall) - 1)], 0.0)
        return float(sum((best / 11.0).tolist()))  # the devkit's running sum
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def voc_outcomes(inputs: EvalInputs) -> tuple[np.ndarray, np.ndarray]:
    """True positive and ignored flags of every detection under the devkit's rule.

    Returns:
        true_pos (D,), ignored (D,) bool; the rest are false positives.
    """
    dt_group, gt_group = inputs.groups()
    det, gt = same_group_pairs(dt_group, gt_group)
    iou = pair_iou(inputs.dt_xywh[det], inputs.gt_xywh[gt], False)
    best = np.lexsort((gt, -iou, det))  # per detection: highest IoU, then first box
    best = best[np.r_[True, det[best][1:] != det[best][:-1]]] if len(best) else best
    num_dets = len(dt_group)
    best_gt = np.full(num_dets, -1, np.int64)
    best_iou = np.zeros(num_dets)
    best_gt[det[best]], best_iou[det[best]] = gt[best], iou[best]
    hit = best_iou >= IOU_THRESHOLD
    ignored = np.zeros(num_dets, bool)
    ignored[hit] = (inputs.gt_difficult | inputs.gt_crowd)[best_gt[hit]]
    claims = np.flatnonzero(hit & ~ignored)
    # The first claim on a box, in the score order of its class, is the true positive.
    claims = claims[np.lexsort((claims, -inputs.dt_score[claims]))]
    true_pos = np.zeros(num_dets, bool)
    true_pos[claims[np.unique(best_gt[claims], return_index=True)[1]]] = True
    return true_pos, ignored


def voc_metrics(
    inputs: EvalInputs, outcomes: tuple[np.ndarray, np.ndarray] | None = None
) -> dict[int, dict[str, Any]]:
    """Per class: ``VOC07_AP``, ``VOC_AP`` (-1 without non-difficult boxes), and the curve.

    ``outcomes``: ``voc_outcomes(inputs)`` when the caller has them already.

    Returns:
        label -> {"VOC07_AP", "VOC_AP": float, "num_pos": int, "recall",
        "precision", "scores": (N,) arrays over the counted detections}.
    """
    true_pos, ignored = outcomes if outcomes is not None else voc_outcomes(inputs)
    counted_gt = ~(inputs.gt_difficult | inputs.gt_crowd)
    out: dict[int, dict[str, Any]] = {}
    for label in inputs.labels:
        dets = np.flatnonzero((inputs.dt_label == label) & ~ignored)
        dets = dets[np.argsort(-inputs.dt_score[dets], kind="stable")]
        num_pos = int(np.count_nonzero(counted_gt & (inputs.gt_label == label)))
        tp = np.cumsum(true_pos[dets])
        fp = np.cumsum(~true_pos[dets])
        recall = tp / max(num_pos, 1)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        ap07 = voc_ap(recall, precision, use_07_metric=True) if num_pos else -1.0
        ap = voc_ap(recall, precision) if num_pos else -1.0
        out[int(label)] = {
            "VOC07_AP": ap07,
            "VOC_AP": ap,
            "num_pos": num_pos,
            "recall": recall,
            "precision": precision,
            "scores": inputs.dt_score[dets],
        }
    return out
