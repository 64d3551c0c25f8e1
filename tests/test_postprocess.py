"""From head outputs to detections: the chapter's multibox_detection and the practical form."""

import math

import pytest
import torch
import torchvision

from tinyssd.anchors import AnchorGenerator
from tinyssd.boxes import box_iou, decode_offsets
from tinyssd.errors import UsageError
from tinyssd.models.config import tiny_ssd
from tinyssd.options import DEFAULT_BOX_VOTE
from tinyssd.postprocess import (
    EVAL_POSTPROCESS,
    PostprocessConfig,
    multibox_detection,
    nms,
    postprocess_detections,
    resolve_postprocess,
    vote_boxes,
)

d2l = pytest.importorskip("d2l.torch")


@pytest.fixture
def one_thread():
    """The chapter's NMS is a Python loop of tiny tensor ops: on a shared 2-core machine
    each op's thread hand-off can cost milliseconds, so run it on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_anchors() -> torch.Tensor:
    config = tiny_ssd()
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    return AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")


def _kept(rows: torch.Tensor) -> torch.Tensor:
    return rows[rows[:, 0] != -1]


def test_chapter_four_anchor_example():
    # the anchor chapter's example: a dog seen by anchors 0-2, a cat by anchor 3
    anchors = torch.tensor(
        [
            [0.1, 0.08, 0.52, 0.92],
            [0.08, 0.2, 0.56, 0.95],
            [0.15, 0.3, 0.62, 0.91],
            [0.55, 0.2, 0.9, 0.88],
        ]
    )
    offset_preds = torch.zeros(1, 16)
    cls_probs = torch.tensor([[0.0] * 4, [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])[None]
    out = multibox_detection(cls_probs, offset_preds, anchors[None], nms_threshold=0.5)
    # anchors 1 and 2 overlap anchor 0 by IoU > 0.5 and lose to its 0.9: class -1
    expected = torch.tensor(
        [
            [
                [0, 0.9, 0.1, 0.08, 0.52, 0.92],
                [1, 0.9, 0.55, 0.2, 0.9, 0.88],
                [-1, 0.8, 0.08, 0.2, 0.56, 0.95],
                [-1, 0.7, 0.15, 0.3, 0.62, 0.91],
            ]
        ]
    )
    torch.testing.assert_close(out, expected)
    assert torch.equal(out, d2l.multibox_detection(cls_probs, offset_preds, anchors[None], 0.5))


@pytest.mark.parametrize("seed", range(2))
def test_kept_rows_equal_chapter_on_tiny_ssd_anchors(seed, one_thread):
    anchors = _tiny_anchors()
    g = torch.Generator().manual_seed(seed)
    batch, num_anchors, num_classes = 4, len(anchors), 3
    logits = torch.randn(batch, num_anchors, num_classes, generator=g) * 2
    logits[..., 0] += 3  # background mostly wins; a few hundred boxes above 0.01 remain
    cls_probs = logits.softmax(-1).permute(0, 2, 1)  # (B, K, A)
    offsets = torch.randn(batch, 4 * num_anchors, generator=g) * 0.1
    ours = multibox_detection(cls_probs, offsets, anchors[None])
    chapter = d2l.multibox_detection(cls_probs, offsets, anchors[None])
    assert ours.shape == chapter.shape == (batch, num_anchors, 6)
    for b in range(batch):
        kept = _kept(ours[b])
        assert len(kept) > 100
        assert torch.equal(kept, _kept(chapter[b]))
        # kept rows first, by descending confidence; every anchor appears once
        assert (ours[b, : len(kept), 0] != -1).all()
        assert (kept[1:, 1] <= kept[:-1, 1]).all()
        assert (ours[b, len(kept) :, 0] == -1).all()
    # every anchor's decoded box appears exactly once in the output
    boxes = decode_offsets(anchors[None], offsets.reshape(batch, -1, 4))
    for b in range(batch):
        key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
        assert key(ours[b, :, 2:]) == key(boxes[b])


def test_low_confidence_rows_are_background_with_one_minus_conf():
    anchors = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9]])
    cls_probs = torch.tensor([[[0.995, 0.3], [0.005, 0.7]]])  # (1, K=2, A=2)
    out = multibox_detection(cls_probs, torch.zeros(1, 8), anchors)
    # anchor 1 (0.7) is kept first; anchor 0's 0.005 < 0.01: class -1, conf 1 - 0.005
    torch.testing.assert_close(
        out[0], torch.tensor([[0, 0.7, 0.5, 0.5, 0.9, 0.9], [-1, 0.995, 0, 0, 0.2, 0.2]])
    )


def _random_xyxy(g, n, scale=1.0):
    xy = torch.rand(n, 2, generator=g) * scale
    return torch.cat((xy, xy + torch.rand(n, 2, generator=g) * scale * 0.5 + 1e-3), dim=1)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_agrees_with_torchvision_and_the_chapter(seed, threshold, one_thread):
    g = torch.Generator().manual_seed(seed)
    boxes, scores = _random_xyxy(g, 300), torch.rand(300, generator=g)
    keep = nms(boxes, scores, threshold)
    assert torch.equal(keep, torchvision.ops.nms(boxes, scores, threshold))
    assert torch.equal(keep, d2l.nms(boxes, scores, threshold))
    # no two kept boxes overlap by more than the threshold
    iou = box_iou(boxes[keep], boxes[keep]).fill_diagonal_(0)
    assert (iou <= threshold).all()


# ---- postprocess_detections -------------------------------------------------------------

# four anchors: 0 and 1 overlap (IoU 0.82), 2 and 3 are apart from everything
ANCHORS = torch.tensor(
    [
        [0.10, 0.10, 0.50, 0.50],
        [0.12, 0.12, 0.52, 0.52],
        [0.60, 0.60, 0.90, 0.90],
        [0.60, 0.05, 0.95, 0.30],
    ]
)


def _logits(probs: list[list[float]]) -> torch.Tensor:
    """``Tensor[1, A, K]`` logits whose softmax is ``probs``."""
    return torch.tensor(probs).log()[None]


def _detect(probs, **kw):
    """NMS's selection; without box voting unless ``box_vote`` is given (tested below)."""
    kw.setdefault("box_vote", 0.0)
    deltas = torch.zeros(1, len(ANCHORS), 4)
    return postprocess_detections(_logits(probs), deltas, ANCHORS, **kw)[0]


# K = 3 (background, class 1, class 2)
PROBS = [
    [0.1, 0.8, 0.1],  # anchor 0: class 1 at 0.8
    [0.1, 0.2, 0.7],  # anchor 1: class 2 at 0.7 (overlaps anchor 0), class 1 at 0.2
    [0.4, 0.595, 0.005],  # anchor 2: class 1 at 0.595; class 2 below 0.01
    [0.48, 0.02, 0.5],  # anchor 3: class 2 at 0.5, class 1 at 0.02
]


def _as_set(det):
    return {
        (int(l), round(float(s), 4), tuple(round(v, 4) for v in b.tolist()))
        for b, s, l in zip(det["boxes"], det["scores"], det["labels"], strict=True)
    }


def test_per_class_nms_keeps_overlapping_boxes_of_different_classes():
    det = _detect(PROBS)
    # anchor 1's class 1 (0.2) is suppressed by anchor 0's class 1 (0.8, IoU 0.82 > 0.45)
    assert det["labels"].tolist() == [1, 2, 1, 2, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.8, 0.7, 0.595, 0.5, 0.02]))
    torch.testing.assert_close(det["boxes"], ANCHORS[[0, 1, 2, 3, 3]])
    assert det["labels"].dtype == torch.int64


def test_class_agnostic_nms_suppresses_overlapping_boxes_of_any_class():
    det = _detect(PROBS, class_agnostic=True)
    # anchor 1 (0.7) overlaps anchor 0 (0.8); anchor 3's class 1 overlaps its class 2
    assert det["labels"].tolist() == [1, 1, 2]
    torch.testing.assert_close(det["boxes"], ANCHORS[[0, 2, 3]])


def test_score_threshold_is_respected():
    det = _detect(PROBS, score_threshold=0.6)
    torch.testing.assert_close(det["scores"], torch.tensor([0.8, 0.7]))
    det = _detect(PROBS, score_threshold=0.03)
    assert det["scores"].min() >= 0.03
    assert len(det["scores"]) == 4
    assert len(_detect(PROBS, score_threshold=0.9)["scores"]) == 0


def test_topk_candidates_caps_what_reaches_nms():
    # the 3 best (anchor, class) pairs per image: 0.8 (a0 c1), 0.7 (a1 c2), 0.595 (a2 c1)
    det = _detect(PROBS, topk_candidates=3)
    torch.testing.assert_close(det["scores"], torch.tensor([0.8, 0.7, 0.595]))
    # the 5th best, anchor 1's class 1 (0.2), is suppressed by anchor 0's class 1: top 5
    # gives 4 detections, and anchor 3's class 1 (0.02, 6th) does not get in
    torch.testing.assert_close(
        _detect(PROBS, topk_candidates=5)["scores"], torch.tensor([0.8, 0.7, 0.595, 0.5])
    )


def test_max_detections_caps_the_output():
    det = _detect(PROBS, max_detections=2)
    assert det["labels"].tolist() == [1, 2]
    assert _as_set(det) <= _as_set(_detect(PROBS))


def test_image_sizes_scale_boxes_to_pixels():
    logits = torch.cat((_logits(PROBS), _logits(PROBS)))
    deltas = torch.zeros(2, len(ANCHORS) * 4)  # (B, 4A) is accepted as well
    out = postprocess_detections(logits, deltas, ANCHORS, image_sizes=[(200, 300), (10, 20)])
    normalised = _detect(PROBS, box_vote=None)["boxes"]  # voted: each image by its own
    torch.testing.assert_close(out[0]["boxes"], normalised * torch.tensor([300, 200, 300, 200]))
    torch.testing.assert_close(out[1]["boxes"], normalised * torch.tensor([20, 10, 20, 10]))


def test_random_batch_invariants():
    g = torch.Generator().manual_seed(0)
    anchors = _tiny_anchors()
    batch, num_classes = 3, 4
    logits = torch.randn(batch, len(anchors), num_classes, generator=g) * 3
    deltas = torch.randn(batch, len(anchors), 4, generator=g) * 0.2
    out = postprocess_detections(  # NMS's invariants: voting moves the boxes it kept
        logits,
        deltas,
        anchors,
        score_threshold=0.05,
        topk_candidates=300,
        max_detections=50,
        box_vote=0.0,
    )
    assert len(out) == batch
    for det in out:
        n = len(det["scores"])
        assert 0 < n <= 50
        assert det["boxes"].shape == (n, 4)
        assert ((det["labels"] >= 1) & (det["labels"] <= num_classes - 1)).all()
        assert (det["scores"] >= 0.05).all()
        assert (det["scores"][1:] <= det["scores"][:-1]).all()
        for c in det["labels"].unique():
            same = det["labels"] == c
            iou = box_iou(det["boxes"][same], det["boxes"][same]).fill_diagonal_(0)
            assert (iou <= 0.45).all()


def test_accepts_the_models_anchors_as_multibox_detection_does():
    anchors = ANCHORS[None]  # Tensor[1, A, 4], as the model returns them
    deltas = torch.zeros(1, len(ANCHORS), 4)
    det = postprocess_detections(_logits(PROBS), deltas, anchors)[0]
    assert _as_set(det) == _as_set(_detect(PROBS, box_vote=None))


def test_the_defaults_are_the_eval_postprocess_config():
    import inspect
    from dataclasses import asdict

    params = inspect.signature(postprocess_detections).parameters
    defaults = {name: params[name].default for name in asdict(EVAL_POSTPROCESS)}
    assert defaults == asdict(EVAL_POSTPROCESS)
    assert EVAL_POSTPROCESS == PostprocessConfig(score_threshold=0.01)


def test_resolve_postprocess_replaces_only_the_fields_given():
    base = PostprocessConfig(nms_threshold=0.6)
    assert resolve_postprocess() == PostprocessConfig()
    assert resolve_postprocess(base) is base
    assert resolve_postprocess(base, threshold=0.2, max_detections=None) == PostprocessConfig(
        score_threshold=0.2, nms_threshold=0.6
    )
    assert resolve_postprocess(None, topk_candidates=50).topk_candidates == 50
    with pytest.raises(TypeError, match="nms_treshold"):
        resolve_postprocess(None, nms_treshold=0.5)
    with pytest.raises(UsageError, match="must be in"):
        resolve_postprocess(None, threshold=1.5)


# ---- box voting -------------------------------------------------------------------------


def _closeness(iou: float, sigma: float) -> float:
    return math.exp(-((1 - iou) ** 2) / sigma)


def test_vote_boxes_weights_the_overlapping_candidates_of_its_class_by_score_and_iou():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    candidates = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # the kept box itself, score 0.9: weight 0.9
            [1.0, 0.0, 11.0, 10.0],  # IoU 90 / 110: weight 0.3 * closeness
            [0.0, 1.0, 10.0, 11.0],  # IoU 90 / 110 but class 2: does not vote
            [0.0, 0.0, 9.0, 10.0],  # IoU 0.9 but score 0 (not a candidate): does not vote
            [20.0, 0.0, 30.0, 10.0],  # no overlap: does not vote
        ]
    )
    scores = torch.tensor([0.9, 0.3, 0.8, 0.0, 0.8])
    labels = (torch.tensor([1]), torch.tensor([1, 1, 2, 1, 1]))
    voted = vote_boxes(kept, candidates, scores, 0.05, labels)
    w = 0.3 * _closeness(90 / 110, 0.05)  # 0.155
    want = torch.tensor([[w * 1.0, 0.0, 0.9 * 10 + w * 11.0, 0.9 * 10]]) / (0.9 + w)
    want[0, 3] = 10.0
    torch.testing.assert_close(voted, want)
    # a wider sigma gives the neighbour more weight
    assert vote_boxes(kept, candidates, scores, 0.5, labels)[0, 0] > voted[0, 0]
    # without labels the class-2 box votes too: y1 moves down by its share
    anyone = vote_boxes(kept, candidates, scores, 0.05)
    w2 = 0.8 * _closeness(90 / 110, 0.05)
    torch.testing.assert_close(anyone[0, 1], torch.tensor(w2 / (0.9 + w + w2)))


def test_vote_boxes_leaves_a_box_without_voters_and_works_per_image():
    kept = torch.tensor([[[0.0, 0.0, 4.0, 4.0]], [[5.0, 5.0, 9.0, 9.0]]])  # (B=2, D=1, 4)
    candidates = torch.tensor([[[5.0, 5.0, 9.0, 9.0]], [[5.0, 5.0, 9.0, 10.0]]])  # (2, 1, 4)
    voted = vote_boxes(kept, candidates, torch.tensor([[0.5], [0.5]]), 0.05)
    torch.testing.assert_close(voted[0], kept[0])  # image 0's only candidate is elsewhere
    torch.testing.assert_close(voted[1], candidates[1])  # image 1's overlaps: its box


def test_postprocess_votes_the_kept_boxes_by_default():
    # anchor 1's class 1 (0.2) is suppressed by anchor 0's class 1 (0.8): by default
    # (box_vote DEFAULT_BOX_VOTE) it pulls the kept box towards it by its weight,
    # score x closeness
    voted = _detect(PROBS, box_vote=None)
    plain = _detect(PROBS)
    assert voted["labels"].tolist() == plain["labels"].tolist()
    torch.testing.assert_close(voted["scores"], plain["scores"])
    closeness = _closeness(float(box_iou(ANCHORS[:1], ANCHORS[1:2])), DEFAULT_BOX_VOTE)
    w = 0.2 * closeness
    torch.testing.assert_close(voted["boxes"][0], (0.8 * ANCHORS[0] + w * ANCHORS[1]) / (0.8 + w))
    # anchor 0's class 2 (0.1) votes for anchor 1's class-2 box (0.7) the same way
    w = 0.1 * closeness
    torch.testing.assert_close(voted["boxes"][1], (0.7 * ANCHORS[1] + w * ANCHORS[0]) / (0.7 + w))
    torch.testing.assert_close(voted["boxes"][2:], plain["boxes"][2:])  # apart: nothing to vote
    # class-agnostic NMS: every class votes; for anchor 0's class-1 box (0.8) also its own
    # class 2 (0.1, IoU 1) and anchor 1's class 2 (0.7)
    agnostic = _detect(PROBS, box_vote=DEFAULT_BOX_VOTE, class_agnostic=True)
    w = (0.2 + 0.7) * closeness
    torch.testing.assert_close(
        agnostic["boxes"][0], (0.9 * ANCHORS[0] + w * ANCHORS[1]) / (0.9 + w)
    )


def test_box_vote_outside_0_1_is_a_usage_error():
    with pytest.raises(UsageError, match="--box-vote"):
        PostprocessConfig(box_vote=1.5)
