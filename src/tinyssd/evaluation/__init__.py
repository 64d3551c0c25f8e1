"""Detection metrics: COCO's twelve numbers and VOC's mAP, without pycocotools.

    result = evaluate(predictions, targets)   # one dict per image each, xyxy pixels
    result["AP"], result["AP50"], result["VOC07_mAP"], result["per_class"][1]["AP50"]

The COCO numbers agree with ``pycocotools.cocoeval.COCOeval(gt, dt, "bbox")``
(given annotation ``area = w * h``) to floating-point precision; the VOC numbers
follow the devkit with continuous IoU (see ``voc.py``). ``iscrowd`` boxes are
COCO crowd regions; ``difficult`` boxes are ignored by the VOC metric only, and
the VOC metric ignores crowd regions too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .coco import RECALL_THRESHOLDS, coco_metrics, flatten_inputs, summarize
from .threshold import best_f1_threshold, threshold_curves
from .voc import voc_ap, voc_metrics, voc_outcomes

__all__ = [
    "SUMMARY_KEYS",
    "COCOEvaluator",
    "DetectionEvaluator",
    "evaluate",
    "to_json",
    "voc_ap",
]

# pycocotools' ``stats``, in its order.
SUMMARY_KEYS = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)


def _mean_ap(values: list[float]) -> float:
    """Mean over the classes that have ground truth (-1 when none has)."""
    kept = [v for v in values if v > -1]
    return float(np.mean(kept)) if kept else -1.0


def evaluate(
    predictions: Sequence[Mapping[str, torch.Tensor | np.ndarray]],
    targets: Sequence[Mapping[str, torch.Tensor | np.ndarray]],
) -> dict:
    """COCO and VOC metrics of per-image detections against ground truth.

    Args:
        predictions: per image ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,),
            ``labels`` (K,) in 1..C.
        targets: per image ``boxes`` (M, 4), ``labels`` (M,), optional
            ``iscrowd`` and ``difficult`` (M,) bools.
    Returns:
        ``SUMMARY_KEYS`` (pycocotools' stats, -1 where no box qualifies),
        ``VOC07_mAP``, ``VOC_mAP`` (means over classes with ground truth) as
        floats; ``per_class``: label -> ``AP AP50 AP75 APs APm APl AR100
        VOC07_AP VOC_AP num_gt num_det``; ``pr_curves``: label -> ``recall``
        (101,) points, ``precision`` (101,) interpolated, ``scores`` (101,)
        score reaching each recall (IoU 0.5, all areas, 100 detections; their
        mean precision is the class's AP50); ``f1_threshold`` and ``f1``: the score
        threshold that maximises F1 over all classes pooled (IoU 0.5) and that F1;
        ``threshold_curves``: ``threshold precision recall f1`` (101,) pooled over classes.
    """
    inputs = flatten_inputs(predictions, targets)
    coco = coco_metrics(inputs)
    true_pos, ignored = voc_outcomes(inputs)  # IoU 0.5 hits: VOC's AP and the F1 threshold
    voc = voc_metrics(inputs, (true_pos, ignored))
    precision, recall = coco["precision"], coco["recall"]
    result: dict = summarize(precision, recall)
    result["VOC07_mAP"] = _mean_ap([v["VOC07_AP"] for v in voc.values()])
    result["VOC_mAP"] = _mean_ap([v["VOC_AP"] for v in voc.values()])
    num_gt = int(np.count_nonzero(~(inputs.gt_difficult | inputs.gt_crowd)))
    counted = ~ignored
    result["f1_threshold"], result["f1"] = best_f1_threshold(
        inputs.dt_score[counted], true_pos[counted], num_gt
    )
    result["threshold_curves"] = threshold_curves(
        inputs.dt_score[counted], true_pos[counted], num_gt
    )
    result["per_class"], result["pr_curves"] = {}, {}
    for k, label in enumerate(int(v) for v in coco["labels"]):
        stats = summarize(precision[:, :, k : k + 1], recall[:, k : k + 1])
        result["per_class"][label] = {
            **{key: stats[key] for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")},
            "VOC07_AP": voc[label]["VOC07_AP"],
            "VOC_AP": voc[label]["VOC_AP"],
            "num_gt": int(np.count_nonzero(inputs.gt_label == label)),
            "num_det": int(np.count_nonzero(inputs.dt_label == label)),
        }
        result["pr_curves"][label] = {
            "recall": RECALL_THRESHOLDS.copy(),
            "precision": precision[0, :, k, 0, 2],
            "scores": coco["scores"][0, :, k, 0, 2],
        }
    return result


def to_json(result: dict) -> dict:
    """``evaluate``'s result with arrays as lists and numpy scalars as Python numbers."""
    if isinstance(result, Mapping):
        return {(k if isinstance(k, str) else int(k)): to_json(v) for k, v in result.items()}
    if isinstance(result, np.ndarray):
        return result.tolist()
    if isinstance(result, np.generic):
        return result.item()
    return result


def _to_numpy(record: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        for k, v in record.items()
        if k in ("boxes", "scores", "labels", "iscrowd", "difficult")
    }


class DetectionEvaluator:
    """Accumulates images batch by batch, then ``evaluate``s them (detectron2's interface).

    evaluator = DetectionEvaluator()
    for images, targets in loader:
        evaluator.process(model_predictions(images), targets)
    metrics = evaluator.evaluate()
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget every processed image."""
        self._predictions: list[dict[str, np.ndarray]] = []
        self._targets: list[dict[str, np.ndarray]] = []

    def process(
        self,
        predictions: Sequence[Mapping[str, torch.Tensor | np.ndarray]],
        targets: Sequence[Mapping[str, torch.Tensor | np.ndarray]],
    ) -> None:
        """Add a batch: per-image dicts as ``evaluate`` takes (copied to CPU numpy)."""
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
        self._predictions += [_to_numpy(p) for p in predictions]
        self._targets += [_to_numpy(t) for t in targets]

    def evaluate(self) -> dict:
        """``evaluate`` over every image processed since the last ``reset``."""
        return evaluate(self._predictions, self._targets)


# detectron2's name for the same thing.
COCOEvaluator = DetectionEvaluator
