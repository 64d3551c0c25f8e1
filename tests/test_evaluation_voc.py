"""VOC AP (11-point and all-point) against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tinyssd.evaluation import evaluate, voc_ap

# Two boxes of class 1, far apart, 10 x 10 pixels.
TWO_BOXES = np.array([[0.0, 0, 10, 10], [20, 0, 30, 10]])
MISS = [50.0, 50, 60, 60]  # overlaps nothing


def one_image(gt_boxes, det_boxes, scores, difficult=None, iscrowd=None, labels=None):
    gt_boxes = np.asarray(gt_boxes, float).reshape(-1, 4)
    target = {"boxes": gt_boxes, "labels": np.ones(len(gt_boxes), int)}
    if difficult is not None:
        target["difficult"] = np.asarray(difficult, bool)
    if iscrowd is not None:
        target["iscrowd"] = np.asarray(iscrowd, bool)
    det_boxes = np.asarray(det_boxes, float).reshape(-1, 4)
    labels = np.ones(len(det_boxes), int) if labels is None else np.asarray(labels)
    prediction = {"boxes": det_boxes, "scores": np.asarray(scores, float), "labels": labels}
    return evaluate([prediction], [target])


def test_voc_ap_of_true_false_true_by_hand() -> None:
    # Two boxes; detections TP, FP, TP: recall [.5, .5, 1], precision [1, .5, 2/3].
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    # All points: envelope 1 on recall (0, .5], 2/3 on (.5, 1] -> .5 + .5 * 2/3 = 5/6.
    assert voc_ap(recall, precision) == pytest.approx(5 / 6)
    # 11 points: best precision at recall >= 0, .1, ..., .5 is 1 (6 points),
    # at recall >= .6, ..., 1 it is 2/3 (5 points) -> (6 + 10/3) / 11 = 28/33.
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(28 / 33)


def test_voc_ap_without_detections_is_zero() -> None:
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0


def test_evaluate_gives_the_hand_computed_voc_numbers() -> None:
    # Scores .9 (on box 0), .8 (on nothing), .7 (on box 1): TP, FP, TP as above.
    result = one_image(TWO_BOXES, [TWO_BOXES[0], MISS, TWO_BOXES[1]], [0.9, 0.8, 0.7])
    assert result["VOC_mAP"] == pytest.approx(5 / 6)
    assert result["VOC07_mAP"] == pytest.approx(28 / 33)
    assert result["per_class"][1]["VOC_AP"] == pytest.approx(5 / 6)


def test_recall_that_stops_half_way_counts_only_up_to_it() -> None:
    # TP then FP: recall [.5, .5], precision [1, .5]. All points: .5 * 1 = .5.
    # 11 points: precision 1 at recall >= 0, ..., .5 (6 points), none beyond: 6/11.
    result = one_image(TWO_BOXES, [TWO_BOXES[0], MISS], [0.9, 0.8])
    assert result["VOC_mAP"] == pytest.approx(0.5)
    assert result["VOC07_mAP"] == pytest.approx(6 / 11)


@pytest.mark.parametrize("score", [0.95, 0.75, 0.1])
def test_a_detection_on_a_difficult_box_changes_nothing(score: float) -> None:
    plain = one_image(TWO_BOXES, [TWO_BOXES[0], MISS, TWO_BOXES[1]], [0.9, 0.8, 0.7])
    hard = [40.0, 40, 50, 50]
    with_difficult = one_image(
        [*TWO_BOXES, hard],
        [TWO_BOXES[0], MISS, TWO_BOXES[1], hard],
        [0.9, 0.8, 0.7, score],
        difficult=[False, False, True],
    )
    for key in ("VOC_mAP", "VOC07_mAP"):
        assert with_difficult[key] == plain[key]


def test_a_missed_difficult_box_does_not_lower_recall() -> None:
    plain = one_image(TWO_BOXES, TWO_BOXES, [0.9, 0.8])
    missed = one_image([*TWO_BOXES, [40, 40, 50, 50]], TWO_BOXES, [0.9, 0.8], [0, 0, 1])
    assert plain["VOC_mAP"] == missed["VOC_mAP"] == pytest.approx(1.0)


def test_crowd_regions_are_ignored_like_difficult_boxes() -> None:
    plain = one_image(TWO_BOXES, [TWO_BOXES[0], MISS, TWO_BOXES[1]], [0.9, 0.8, 0.7])
    crowd = [40.0, 40, 50, 50]
    with_crowd = one_image(
        [*TWO_BOXES, crowd],
        [TWO_BOXES[0], crowd, MISS, TWO_BOXES[1]],
        [0.9, 0.85, 0.8, 0.7],
        iscrowd=[False, False, True],
    )
    assert with_crowd["VOC_mAP"] == plain["VOC_mAP"]


def test_a_detection_whose_best_box_is_taken_is_a_false_positive() -> None:
    # Boxes a = [0, 10] and b = [2, 12] (x; y in [0, 10]). d0 = a exactly takes a.
    # d1 = [1, 11] overlaps a and b equally, 90 / 110 = 0.82; the devkit picks
    # the first, a, which is taken: FP, though b is free. TP, FP:
    # recall [.5, .5], precision [1, .5] -> all points .5, 11 points 6/11.
    boxes = [[0.0, 0, 10, 10], [2, 0, 12, 10]]
    result = one_image(boxes, [boxes[0], [1, 0, 11, 10]], [0.9, 0.8])
    assert result["VOC_mAP"] == pytest.approx(0.5)
    assert result["VOC07_mAP"] == pytest.approx(6 / 11)
    # COCO's matching moves on to b: both detections are true positives.
    assert result["AP50"] == pytest.approx(1.0)


def test_iou_is_continuous_without_the_devkit_plus_one() -> None:
    # Box 10 x 10; detection 10 x 20.5 over it: IoU 100 / 205 = 0.488 < 0.5,
    # a miss. The devkit's +1 pixel would give 121 / 236.5 = 0.512, a hit.
    result = one_image([[0, 0, 10, 10]], [[0, 0, 10, 20.5]], [0.9])
    assert result["VOC_mAP"] == 0.0
    # 10 x 20: IoU exactly 100 / 200 = 0.5 counts (the devkit's >=).
    result = one_image([[0, 0, 10, 10]], [[0, 0, 10, 20]], [0.9])
    assert result["VOC_mAP"] == pytest.approx(1.0)


def test_a_class_without_boxes_is_minus_one_and_left_out_of_the_mean() -> None:
    # Class 2 has only a detection: VOC AP -1, and the mean is class 1's 1.0.
    result = one_image([[0, 0, 10, 10]], [[0, 0, 10, 10], MISS], [0.9, 0.8], labels=[1, 2])
    assert result["per_class"][2]["VOC_AP"] == -1.0
    assert result["per_class"][2]["VOC07_AP"] == -1.0
    assert result["VOC_mAP"] == pytest.approx(1.0)
