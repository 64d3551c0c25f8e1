"""tinyssd.evaluation's COCO numbers against pycocotools, case by adversarial case."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tinyssd.evaluation import SUMMARY_KEYS, DetectionEvaluator, evaluate, to_json
from tinyssd.evaluation.coco import greedy_match

NUM_CLASSES = 3


def pycocotools_eval(predictions: list, targets: list, cat_ids: list[int] | None = None):
    """pycocotools' COCOeval on the same data, built in memory (GT area = w * h)."""
    images = [{"id": i + 1} for i in range(len(targets))]
    categories = [{"id": c} for c in range(1, NUM_CLASSES + 1)]
    annotations, results = [], []
    for i, t in enumerate(targets):
        crowd = t.get("iscrowd", np.zeros(len(t["labels"]), bool))
        for box, label, is_crowd in zip(np.asarray(t["boxes"], float), t["labels"], crowd):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label),
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(is_crowd),
                }
            )
    for i, p in enumerate(predictions):
        for box, score, label in zip(np.asarray(p["boxes"], float), p["scores"], p["labels"]):
            xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            results.append(
                {"image_id": i + 1, "category_id": int(label), "bbox": xywh, "score": float(score)}
            )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "categories": categories, "annotations": annotations}
        gt.createIndex()
        if results:
            dt = gt.loadRes(results)
        else:  # loadRes cannot take an empty list
            dt = COCO()
            dt.dataset = {"images": images, "categories": categories, "annotations": []}
            dt.createIndex()
        run = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            run.params.catIds = cat_ids
        run.evaluate()
        run.accumulate()
        run.summarize()
    return run.stats


def assert_agrees(predictions: list, targets: list) -> dict:
    result = evaluate(predictions, targets)
    ours = np.array([result[k] for k in SUMMARY_KEYS])
    np.testing.assert_allclose(ours, pycocotools_eval(predictions, targets), rtol=0, atol=1e-6)
    return result


def random_case(rng: np.random.Generator, scenario: str) -> tuple[list, list]:
    """A few images whose boxes and scores are drawn to hit pycocotools' corner cases."""
    grid = scenario in ("grid_ties", "duplicates")  # coarse coordinates: equal IoUs
    predictions, targets = [], []
    for _ in range(int(rng.integers(1, 7))):
        m = 0 if scenario == "dets_only" else int(rng.integers(0, 7))
        if scenario == "area_edges":  # 16x64, 32x32, 96x96, 48x192 and one pixel off
            sides = np.array([[16, 64], [32, 32], [96, 96], [48, 192], [31, 33], [97, 95]])
            wh = sides[rng.integers(0, len(sides), m)].astype(float)
        else:
            wh = rng.integers(1, 16, (m, 2)) * 8.0 if grid else rng.uniform(2, 150, (m, 2))
        xy = rng.integers(0, 20, (m, 2)) * 8.0 if grid else rng.uniform(0, 200, (m, 2))
        gt = np.c_[xy, xy + wh]
        labels = rng.integers(1, NUM_CLASSES + 1, m)
        crowd_rate = {"crowd_heavy": 0.4}.get(scenario, 0.1)
        targets.append({"boxes": gt, "labels": labels, "iscrowd": rng.random(m) < crowd_rate})
        k = (
            0
            if scenario == "gt_only"
            else int(rng.integers(0, 150 if scenario == "over_100" else 40))
        )
        source = rng.integers(0, max(m, 1), k)
        if m and scenario == "duplicates":
            boxes = gt[source]
        elif m:
            step = 8.0 if grid else rng.uniform(0.5, 4)
            boxes = gt[source] + rng.integers(-2, 3, (k, 4)) * step
        else:
            boxes = np.zeros((k, 4))
        far = rng.random(k) < 0.3 if m else np.ones(k, bool)
        fxy = rng.uniform(0, 200, (k, 2))
        boxes[far] = np.c_[fxy, fxy + rng.uniform(2, 120, (k, 2))][far]
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        det_labels = labels[source] if m else rng.integers(1, NUM_CLASSES + 1, k)
        swapped = rng.random(k) < 0.15
        det_labels = np.where(swapped, rng.integers(1, NUM_CLASSES + 1, k), det_labels)
        if scenario == "over_100":
            det_labels = np.ones(k, np.int64)
        ties = scenario in ("grid_ties", "duplicates", "over_100")
        scores = rng.integers(1, 5, k) / 4 if ties else rng.random(k)
        predictions.append({"boxes": boxes, "scores": scores, "labels": det_labels})
    return predictions, targets


SCENARIOS = [
    "mixed",
    "grid_ties",
    "duplicates",
    "crowd_heavy",
    "area_edges",
    "over_100",
    "dets_only",
    "gt_only",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_twelve_numbers_agree_with_pycocotools(scenario: str) -> None:
    for seed in range(40):
        predictions, targets = random_case(np.random.default_rng(seed), scenario)
        assert_agrees(predictions, targets)


@st.composite
def integer_cases(draw) -> tuple[list, list]:
    """Tiny images with integer boxes on a 0..12 grid: equal IoUs and exact thresholds."""
    box = st.tuples(*[st.integers(0, 6)] * 2, *[st.integers(1, 6)] * 2).map(
        lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]
    )
    predictions, targets = [], []
    for _ in range(draw(st.integers(1, 3))):
        gts = draw(st.lists(st.tuples(box, st.integers(1, 2), st.booleans()), max_size=4))
        dets = draw(st.lists(st.tuples(box, st.integers(1, 2), st.integers(1, 3)), max_size=6))
        targets.append(
            {
                "boxes": np.array([g[0] for g in gts], float).reshape(-1, 4),
                "labels": np.array([g[1] for g in gts], np.int64),
                "iscrowd": np.array([g[2] for g in gts], bool),
            }
        )
        predictions.append(
            {
                "boxes": np.array([d[0] for d in dets], float).reshape(-1, 4),
                "labels": np.array([d[1] for d in dets], np.int64),
                "scores": np.array([d[2] / 3 for d in dets]),
            }
        )
    return predictions, targets


@settings(max_examples=250, deadline=None)
@given(integer_cases())
def test_small_integer_cases_agree_with_pycocotools(case: tuple[list, list]) -> None:
    assert_agrees(*case)


def test_per_class_ap_agrees_with_pycocotools_restricted_to_that_class() -> None:
    predictions, targets = random_case(np.random.default_rng(7), "mixed")
    result = evaluate(predictions, targets)
    for label, row in result["per_class"].items():
        stats = pycocotools_eval(predictions, targets, cat_ids=[label])
        np.testing.assert_allclose([row["AP"], row["AP50"], row["AP75"]], stats[:3], atol=1e-12)
        np.testing.assert_allclose(row["AR100"], stats[8], atol=1e-12)
        np.testing.assert_allclose(result["pr_curves"][label]["precision"].mean(), row["AP50"])


def test_images_without_boxes_or_detections_change_nothing() -> None:
    predictions, targets = random_case(np.random.default_rng(3), "mixed")
    empty_pred = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    empty_target = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)}
    padded = assert_agrees(predictions + [empty_pred] * 3, targets + [empty_target] * 3)
    plain = evaluate(predictions, targets)
    assert all(padded[k] == plain[k] for k in SUMMARY_KEYS)


def test_perfect_detections_score_one_and_no_detections_score_zero() -> None:
    targets = [
        {"boxes": np.array([[0.0, 0, 50, 50], [60, 60, 200, 220]]), "labels": np.array([1, 2])},
        {"boxes": np.array([[10.0, 10, 20, 20]]), "labels": np.array([1])},
    ]
    perfect = [
        {"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"]))}
        for t in targets
    ]
    result = evaluate(perfect, targets)
    # Class 1 has a medium and a small box, class 2 a large one: the classes
    # without boxes in a range (-1) are left out of that range's mean.
    assert [result[k] for k in SUMMARY_KEYS] == pytest.approx([1.0] * 12, abs=1e-12)
    assert result["per_class"][2]["APs"] == -1.0
    none = [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)}] * 2
    assert evaluate(none, targets)["AP"] == 0.0


def test_detections_past_the_100th_of_an_image_and_class_are_dropped() -> None:
    # 100 detections on nothing score above a perfect one: it is cut as the 101st.
    gt = np.array([[0.0, 0, 10, 10]])
    boxes = np.r_[np.tile([[100.0, 100, 110, 110]], (100, 1)), gt]
    scores = np.r_[np.full(100, 0.9), 0.5]
    predictions = [{"boxes": boxes, "scores": scores, "labels": np.ones(101, int)}]
    targets = [{"boxes": gt, "labels": np.array([1])}]
    result = assert_agrees(predictions, targets)
    assert result["AR100"] == 0.0


def test_a_detection_between_two_equal_boxes_takes_the_later_one() -> None:
    # d0 (score .9) overlaps g0 = [0, 10] and g1 = [2, 12] equally: 90 / 110 = 0.818.
    # pycocotools gives it g1 (the later box), leaving g0 to d1 (IoU 1 with g0,
    # 2/3 with g1). Had d0 taken g0, d1 would miss at IoU 0.7 to 0.8.
    targets = [{"boxes": np.array([[0.0, 0, 10, 10], [2, 0, 12, 10]]), "labels": np.ones(2, int)}]
    boxes = np.array([[1.0, 0, 11, 10], [0, 0, 10, 10]])
    predictions = [{"boxes": boxes, "scores": np.array([0.9, 0.8]), "labels": np.ones(2, int)}]
    result = assert_agrees(predictions, targets)
    # Both match up to IoU 0.8 (7 thresholds), only d1 beyond: recall 1 x 7, 0.5 x 3.
    assert result["AR100"] == pytest.approx((7 + 0.5 * 3) / 10)


def test_an_iou_exactly_at_a_threshold_matches() -> None:
    # IoU 100 / 200 = 0.5 and 75 / 100 = 0.75: matched at 0.5 and 0.75, not above.
    targets = [{"boxes": np.array([[0.0, 0, 10, 10], [0, 20, 10, 30]]), "labels": np.ones(2, int)}]
    boxes = np.array([[0.0, 0, 10, 20], [0, 20, 10, 27.5]])
    predictions = [{"boxes": boxes, "scores": np.array([0.9, 0.8]), "labels": np.ones(2, int)}]
    result = assert_agrees(predictions, targets)
    assert result["AP50"] == pytest.approx(1.0)
    # At 0.75 only the second matches, after a false positive: precision 1/2 at
    # the 51 recall points up to 1/2, 0 beyond.
    assert result["AP75"] == pytest.approx(0.5 * 51 / 101)


def test_greedy_match_follows_the_docstring_example() -> None:
    # Detections ranked 0 and 1, boxes g0 and g1: IoU [[0.6, 0.7], [0.8, 0.0]].
    det, gt, iou = np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.6, 0.7, 0.8])
    group, rank = np.zeros(2, int), np.array([0, 1])
    no_ignore = np.zeros((1, 2), bool)
    dets, matched = greedy_match(
        det, gt, iou, group, rank, np.zeros(2, int), no_ignore, no_ignore[0]
    )
    assert dets.tolist() == [0, 1]
    assert matched[:, 0, 0].tolist() == [1, 0]  # at IoU 0.5
    assert matched[:, 0, -1].tolist() == [-1, -1]  # at IoU 0.95 nothing is close enough
    crowd = np.array([False, True])
    _, matched = greedy_match(det, gt, iou, group, rank, np.zeros(2, int), crowd[None], crowd)
    assert matched[:, 0, 0].tolist() == [0, -1]


def test_torch_and_numpy_inputs_give_the_same_result() -> None:
    predictions, targets = random_case(np.random.default_rng(11), "mixed")
    as_torch = [{k: torch.as_tensor(v) for k, v in d.items()} for d in predictions]
    targets_torch = [{k: torch.as_tensor(v) for k, v in d.items()} for d in targets]
    a, b = evaluate(predictions, targets), evaluate(as_torch, targets_torch)
    assert [a[k] for k in SUMMARY_KEYS] == [b[k] for k in SUMMARY_KEYS]


def test_evaluator_batches_equal_one_call_and_reset_forgets() -> None:
    predictions, targets = random_case(np.random.default_rng(5), "mixed")
    evaluator = DetectionEvaluator()
    evaluator.process(predictions[:1], targets[:1])
    evaluator.reset()
    for i in range(len(predictions)):
        evaluator.process(predictions[i : i + 1], targets[i : i + 1])
    batched, whole = evaluator.evaluate(), evaluate(predictions, targets)
    assert [batched[k] for k in SUMMARY_KEYS] == [whole[k] for k in SUMMARY_KEYS]


def test_result_is_json_dumpable_with_python_floats() -> None:
    predictions, targets = random_case(np.random.default_rng(2), "mixed")
    result = evaluate(predictions, targets)
    assert all(type(result[k]) is float for k in (*SUMMARY_KEYS, "VOC07_mAP", "VOC_mAP"))
    loaded = json.loads(json.dumps(to_json(result)))
    assert loaded["AP"] == result["AP"]
    label = next(iter(result["per_class"]))
    assert len(loaded["pr_curves"][str(label)]["precision"]) == 101


def test_mismatched_lengths_are_rejected_with_the_counts() -> None:
    with pytest.raises(ValueError, match="2 prediction dicts for 1 target"):
        evaluate([{"boxes": [], "scores": [], "labels": []}] * 2, [{"boxes": [], "labels": []}])
    with pytest.raises(ValueError, match=r"predictions\[0\]: 1 boxes, 2 scores"):
        evaluate(
            [{"boxes": [[0, 0, 1, 1]], "scores": [0.1, 0.2], "labels": [1]}],
            [{"boxes": [], "labels": []}],
        )
