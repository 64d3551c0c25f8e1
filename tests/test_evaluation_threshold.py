"""The stored score threshold: F1-optimal on a hand-built score list."""

import numpy as np
import pytest

from tinyssd.evaluation import evaluate
from tinyssd.evaluation.threshold import best_f1_threshold, f1_curve, threshold_curves


def test_the_stored_threshold_is_the_f1_optimal_one_on_a_hand_built_list():
    scores = np.array([0.3, 0.9, 0.6, 0.8, 0.4])
    true_pos = np.array([0, 1, 0, 1, 1], bool)
    thresholds, precision, recall, f1 = f1_curve(scores, true_pos, num_gt=4)
    np.testing.assert_allclose(thresholds, [0.9, 0.8, 0.6, 0.4, 0.3])
    np.testing.assert_allclose(precision, [1, 1, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [1 / 4, 2 / 4, 2 / 4, 3 / 4, 3 / 4])
    assert best_f1_threshold(scores, true_pos, 4) == (0.4, pytest.approx(0.75))


def test_equal_scores_are_kept_or_dropped_together():
    # a threshold cannot keep one of two equal scores: they form one point
    thresholds, precision, _, _ = f1_curve(np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1]), 2)
    np.testing.assert_allclose(thresholds, [0.5, 0.2])
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3])


def test_of_equal_f1_the_lower_threshold_wins_and_no_hit_gives_zero():
    assert best_f1_threshold(np.array([0.9, 0.5]), np.array([1, 1]), 4)[0] == 0.5
    assert best_f1_threshold(np.array([0.9]), np.array([0], bool), 3) == (0.0, 0.0)
    assert best_f1_threshold(np.zeros(0), np.zeros(0, bool), 3) == (0.0, 0.0)


def test_threshold_curves_count_the_detections_at_or_above_each_threshold():
    curves = threshold_curves(np.array([0.25, 0.75]), np.array([1, 0], bool), 2, points=5)
    np.testing.assert_allclose(curves["threshold"], [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curves["precision"], [0.5, 0.5, 0, 0, 1])
    np.testing.assert_allclose(curves["recall"], [0.5, 0.5, 0, 0, 0])


def test_evaluate_reports_the_threshold_that_keeps_the_hits_and_drops_the_misses():
    gt = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "labels": np.array([1, 1])}
    pred = {
        "boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float),
        "scores": np.array([0.7, 0.35, 0.2]),
        "labels": np.array([1, 1, 1]),
    }
    result = evaluate([pred], [gt])
    assert result["f1_threshold"] == pytest.approx(0.35)
    assert result["f1"] == pytest.approx(1.0)
