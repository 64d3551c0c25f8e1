"""Precision, recall and the confusion matrix at one threshold, against hand-counted cases."""

import numpy as np
import pytest
import torch

from tinyssd.evaluation import evaluate
from tinyssd.evaluation.confusion import (
    class_precision_recall,
    class_threshold_curves,
    confusion_matrix,
)


def _image(boxes, labels, scores=None, **flags):
    d = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}
    d["labels"] = torch.tensor(labels, dtype=torch.int64)
    if scores is not None:
        d["scores"] = torch.tensor(scores, dtype=torch.float32)
    d.update({k: torch.tensor(v) for k, v in flags.items()})
    return d


A, B = [0, 0, 10, 10], [20, 0, 30, 10]
FAR = [50, 50, 60, 60]


def test_the_docstring_example_matrix():
    targets = [_image([A, B], [1, 2])]
    preds = [_image([A, B, FAR, A], [1, 1, 2, 2], [0.9, 0.8, 0.7, 0.3])]
    matrix = confusion_matrix(preds, targets, num_classes=2, score_threshold=0.5)
    np.testing.assert_array_equal(matrix, [[0, 0, 0], [0, 1, 1], [1, 0, 0]])


def test_a_missed_box_counts_in_the_background_row_and_a_low_score_is_dropped():
    targets = [_image([A, B], [1, 2]), _image([], [])]
    preds = [_image([A], [1], [0.4]), _image([FAR], [2], [0.6])]
    at_half = confusion_matrix(preds, targets, 2, 0.5)
    np.testing.assert_array_equal(at_half, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    at_low = confusion_matrix(preds, targets, 2, 0.3)
    np.testing.assert_array_equal(at_low, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])


def test_one_detection_takes_one_box_the_best_overlap_first():
    # two detections on one box: the higher-IoU one matches, the other is a false detection
    targets = [_image([A], [1])]
    preds = [_image([[1, 0, 11, 10], A], [1, 1], [0.9, 0.6])]
    np.testing.assert_array_equal(confusion_matrix(preds, targets, 1, 0.5), [[0, 0], [1, 1]])


def test_difficult_boxes_and_detections_on_them_are_not_counted():
    targets = [_image([A, B], [1, 1], difficult=[True, False])]
    preds = [_image([A], [1], [0.9])]
    np.testing.assert_array_equal(confusion_matrix(preds, targets, 1, 0.5), [[0, 1], [0, 0]])


def test_a_label_outside_the_classes_is_a_value_error():
    with pytest.raises(ValueError, match="labels must be in 1..1"):
        confusion_matrix([_image([A], [2], [0.9])], [_image([A], [1])], 1, 0.5)


def test_precision_and_recall_per_class_at_the_threshold():
    # class 1: 3 boxes; detections 0.9 TP, 0.8 FP, 0.6 TP, 0.3 TP -> at 0.5: P 2/3, R 2/3
    # class 2: 1 box, one detection 0.7 on it -> P 1, R 1; at 0.75 nothing kept: P 0, R 0
    boxes = [A, B, [40, 0, 50, 10], [0, 40, 10, 50]]
    targets = [_image(boxes, [1, 1, 1, 2])]
    preds = [
        _image(
            [A, FAR, B, [40, 0, 50, 10], [0, 40, 10, 50]],
            [1, 1, 1, 1, 2],
            [0.9, 0.8, 0.6, 0.3, 0.7],
        )
    ]
    pr = class_precision_recall(preds, targets, 0.5)
    assert pr[1]["precision"] == pytest.approx(2 / 3) and pr[1]["recall"] == pytest.approx(2 / 3)
    assert (pr[1]["true_pos"], pr[1]["false_pos"], pr[1]["num_gt"]) == (2, 1, 3)
    assert pr[2]["precision"] == 1.0 and pr[2]["recall"] == 1.0
    high = class_precision_recall(preds, targets, 0.75)
    assert high[2] == {"precision": 0.0, "recall": 0.0, "true_pos": 0, "false_pos": 0, "num_gt": 1}


def test_pooled_counts_agree_with_evaluates_threshold_curves():
    rng = np.random.default_rng(0)
    preds, targets = [], []
    for _ in range(20):
        xy = rng.uniform(0, 80, (4, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 20, (4, 2))], axis=1)
        jitter = gt + rng.normal(0, 2, gt.shape)
        det = np.concatenate([jitter, rng.uniform(0, 80, (3, 4)).clip(0) + [0, 0, 20, 20]])
        targets.append(_image(gt.tolist(), rng.integers(1, 3, 4).tolist()))
        preds.append(_image(det.tolist(), rng.integers(1, 3, 7).tolist(), rng.random(7).tolist()))
    result = evaluate(preds, targets)
    curves = result["threshold_curves"]
    for i in (20, 50, 80):
        t = curves["threshold"][i]
        pr = class_precision_recall(preds, targets, t).values()
        tp = sum(c["true_pos"] for c in pr)
        kept = sum(c["true_pos"] + c["false_pos"] for c in pr)
        assert tp / sum(c["num_gt"] for c in pr) == pytest.approx(curves["recall"][i])
        assert (tp / kept if kept else 1.0) == pytest.approx(curves["precision"][i])  # curves: 1


def test_per_class_curves_fall_with_the_threshold():
    targets = [_image([A, B], [1, 1])]
    preds = [_image([A, B, FAR], [1, 1, 1], [0.9, 0.4, 0.6])]
    curves = class_threshold_curves(preds, targets)[1]
    at = {round(t, 2): i for i, t in enumerate(curves["threshold"])}
    assert curves["recall"][at[0.3]] == 1.0 and curves["precision"][at[0.3]] == pytest.approx(2 / 3)
    assert curves["recall"][at[0.5]] == 0.5 and curves["precision"][at[0.5]] == 0.5
    assert curves["recall"][at[0.95]] == 0.0 and curves["precision"][at[0.95]] == 1.0
