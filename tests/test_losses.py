"""SSD losses: every option's value on tiny hand-computed cases."""

import math

import pytest
import torch

from tinyssd.losses import (
    FOCAL_GIOU,
    LossConfig,
    MultiBoxLoss,
    chapter_loss,
    hard_negative_mask,
    iou_box_loss,
    smooth_l1,
)

LN2, LN3 = math.log(2), math.log(3)


def _case():
    """B=1, A=2, K=2.

    anchor 0: logits (0, 0), an object (class 1): p_t = 1/2, CE = ln 2.
    anchor 1: logits (0, ln 3), background: p_0 = 1/(1+3) = 1/4, CE = ln 4 = 2 ln 2.
    boxes: anchor 0 matched, its diffs pred - label = (1, -2, -0.5, -0.1);
    anchor 1 masked out (its prediction 3 and label 9 must not count).
    """
    cls_preds = torch.tensor([[[0.0, 0.0], [0.0, LN3]]])
    cls_labels = torch.tensor([[1, 0]])
    bbox_preds = torch.tensor([[1.0, -2.0, 0.5, 0.1, 3.0, 3.0, 3.0, 3.0]])
    bbox_labels = torch.tensor([[0.0, 0.0, 1.0, 0.2, 9.0, 9.0, 9.0, 9.0]])
    bbox_masks = torch.tensor([[1.0] * 4 + [0.0] * 4])
    return cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks


def _loss(config: LossConfig, case) -> dict:
    return MultiBoxLoss(config)(*case)


def _check(out: dict, cls_loss: float, box_loss: float, loss: float) -> None:
    torch.testing.assert_close(out["cls_loss"], torch.tensor(cls_loss))
    torch.testing.assert_close(out["box_loss"], torch.tensor(box_loss))
    torch.testing.assert_close(out["loss"], torch.tensor(loss))


def test_chapter_default():
    # CE mean over 2 anchors: (ln 2 + 2 ln 2) / 2 = 1.5 ln 2
    # L1 mean over 4A = 8 values: (1 + 2 + 0.5 + 0.1) / 8 = 0.45
    out = _loss(LossConfig(), _case())
    _check(out, 1.5 * LN2, 0.45, 1.5 * LN2 + 0.45)
    torch.testing.assert_close(out["loss"], chapter_loss(*_case()).mean())


def _two_images():
    """The case above plus an image with two background anchors at logits (0, 0):
    CE ln 2 each, no matched box."""
    cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks = _case()
    return (
        torch.cat((cls_preds, torch.zeros(1, 2, 2))),
        torch.cat((cls_labels, torch.zeros(1, 2, dtype=torch.int64))),
        torch.cat((bbox_preds, torch.ones(1, 8))),
        torch.cat((bbox_labels, torch.zeros(1, 8))),
        torch.cat((bbox_masks, torch.zeros(1, 8))),
    )


def test_chapter_default_is_the_batch_mean():
    # image 1: 1.5 ln 2 + 0.45; image 2: ln 2 + 0; mean: 1.25 ln 2 + 0.225
    out = _loss(LossConfig(), _two_images())
    _check(out, 1.25 * LN2, 0.225, 1.25 * LN2 + 0.225)
    torch.testing.assert_close(chapter_loss(*_two_images()), torch.tensor([1.5 * LN2 + 0.45, LN2]))


def test_chapter_default_equals_the_reference_calc_loss(chapter):
    g = torch.Generator().manual_seed(0)
    batch, num_anchors, num_classes = 3, 50, 4
    cls_preds = torch.randn(batch, num_anchors, num_classes, generator=g)
    cls_labels = torch.randint(0, num_classes, (batch, num_anchors), generator=g)
    bbox_preds = torch.randn(batch, 4 * num_anchors, generator=g)
    bbox_masks = (cls_labels > 0).float().repeat_interleave(4, dim=1)
    bbox_labels = torch.randn(batch, 4 * num_anchors, generator=g) * bbox_masks
    args = (cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks)
    reference = chapter.calc_loss(*args)
    torch.testing.assert_close(chapter_loss(*args), reference)
    torch.testing.assert_close(MultiBoxLoss()(*args)["loss"], reference.mean())
    for case in (_case(), _two_images()):
        torch.testing.assert_close(chapter.calc_loss(*case), chapter_loss(*case))


def test_smooth_l1_sigma_1():
    # |x| < 1: 0.5 x^2, else |x| - 0.5: 1 -> 0.5 (both branches agree at 1),
    # 2 -> 1.5, 0.5 -> 0.125, 0.1 -> 0.005; sum 2.13, over 8 values: 0.26625
    out = _loss(LossConfig(box="smooth_l1"), _case())
    _check(out, 1.5 * LN2, 0.26625, 1.5 * LN2 + 0.26625)


def test_smooth_l1_sigma_2():
    # |x| < 1/4: 0.5 * 4 x^2 = 2 x^2, else |x| - 0.5/4 = |x| - 0.125:
    # 1 -> 0.875, 2 -> 1.875, 0.5 -> 0.375, 0.1 -> 0.02 (quadratic); sum 3.145, / 8 = 0.393125
    out = _loss(LossConfig(box="smooth_l1", sigma=2.0), _case())
    _check(out, 1.5 * LN2, 0.393125, 1.5 * LN2 + 0.393125)


def test_smooth_l1_elementwise_branches():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 1.0, 4.0])
    torch.testing.assert_close(
        smooth_l1(x, sigma=1.0), torch.tensor([2.5, 0.125, 0.0, 0.02, 0.5, 3.5])
    )
    # sigma 0.5: quadratic 0.125 x^2 up to |x| = 4, then |x| - 2
    torch.testing.assert_close(
        smooth_l1(x, sigma=0.5), torch.tensor([1.125, 0.03125, 0.0, 0.005, 0.125, 2.0])
    )


def test_focal_gamma_and_alpha():
    # -alpha_t (1 - p_t)^2 log p_t, alpha_t = 0.25 for the object, 0.75 for background:
    # anchor 0: 0.25 * (1/2)^2 * ln 2 = ln 2 / 16; anchor 1: 0.75 * (3/4)^2 * 2 ln 2 = 0.84375 ln 2
    # mean over 2 anchors: 0.453125 ln 2
    out = _loss(LossConfig(cls="focal", gamma=2.0, alpha=0.25), _case())
    _check(out, 0.453125 * LN2, 0.45, 0.453125 * LN2 + 0.45)


def test_focal_without_alpha():
    # anchor 0: (1/2)^2 ln 2 = 0.25 ln 2; anchor 1: (3/4)^2 * 2 ln 2 = 1.125 ln 2; mean 0.6875 ln 2
    out = _loss(LossConfig(cls="focal", gamma=2.0, alpha=None), _case())
    torch.testing.assert_close(out["cls_loss"], torch.tensor(0.6875 * LN2))


def test_focal_alpha_only():
    # gamma 0: alpha_t CE: 0.25 ln 2 and 0.75 * 2 ln 2 = 1.5 ln 2; mean 0.875 ln 2
    out = _loss(LossConfig(cls="focal", gamma=0.0, alpha=0.25), _case())
    torch.testing.assert_close(out["cls_loss"], torch.tensor(0.875 * LN2))


def test_focal_with_gamma_0_and_no_alpha_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    cls_preds = torch.randn(2, 30, 3, generator=g)
    cls_labels = torch.randint(0, 3, (2, 30), generator=g)
    boxes = (torch.zeros(2, 120),) * 3
    focal = MultiBoxLoss(LossConfig(cls="focal", gamma=0.0, alpha=None))
    out = focal(cls_preds, cls_labels, *boxes)
    torch.testing.assert_close(out["loss"], MultiBoxLoss()(cls_preds, cls_labels, *boxes)["loss"])


def _mining_case():
    """B=1, A=6, K=2: anchor 0 an object at logits (0, 0): CE ln 2.

    Background anchors at logits (0, ln k): p_0 = 1 / (1 + k), CE = ln(1 + k):
    k = 3, 0.5, 15, 1, 7 -> CE 2 ln 2, ln 1.5, 4 ln 2, ln 2, 3 ln 2 (anchors 1..5).
    """
    ks = [3.0, 0.5, 15.0, 1.0, 7.0]
    cls_preds = torch.tensor([[[0.0, 0.0]] + [[0.0, math.log(k)] for k in ks]])
    cls_labels = torch.tensor([[1, 0, 0, 0, 0, 0]])
    zeros = torch.zeros(1, 24)
    return cls_preds, cls_labels, zeros, zeros, zeros


def test_hard_negative_mining_keeps_the_three_hardest_negatives():
    # 1 positive -> 3 negatives: the largest CE, anchors 3 (4 ln 2), 5 (3 ln 2), 1 (2 ln 2)
    cls_loss = torch.tensor([[LN2, 2 * LN2, math.log(1.5), 4 * LN2, LN2, 3 * LN2]])
    positive = torch.tensor([[True, False, False, False, False, False]])
    mask = hard_negative_mask(cls_loss, positive, 3.0)
    assert mask.tolist() == [[True, True, False, True, False, True]]
    assert hard_negative_mask(cls_loss, positive, 1.0).tolist() == [
        [True, False, False, True, False, False]
    ]
    # 1.5 negatives per positive round down to 1
    assert hard_negative_mask(cls_loss, positive, 1.5).sum() == 2
    # an image without positives keeps no negatives
    assert not hard_negative_mask(cls_loss, torch.zeros_like(positive), 3.0).any()


def test_hard_negative_mining_loss():
    # counted anchors: 0 (ln 2), 3 (4 ln 2), 5 (3 ln 2), 1 (2 ln 2); sum 10 ln 2
    # normalize="anchors": over the 4 counted anchors -> 2.5 ln 2
    out = _loss(LossConfig(neg_pos=3.0), _mining_case())
    _check(out, 2.5 * LN2, 0.0, 2.5 * LN2)
    # normalize="positives": over the 1 positive -> 10 ln 2
    out = _loss(LossConfig(neg_pos=3.0, normalize="positives"), _mining_case())
    _check(out, 10 * LN2, 0.0, 10 * LN2)


def test_hard_negative_mining_over_a_batch():
    # image 2 has only background: nothing of it is counted
    cls_preds, cls_labels, *boxes = _mining_case()
    batch = (
        torch.cat((cls_preds, cls_preds)),
        torch.cat((cls_labels, torch.zeros_like(cls_labels))),
        *(torch.cat((b, b)) for b in boxes),
    )
    # "anchors": image means 2.5 ln 2 and 0 (nothing counted), batch mean 1.25 ln 2
    torch.testing.assert_close(
        _loss(LossConfig(neg_pos=3.0), batch)["cls_loss"], torch.tensor(1.25 * LN2)
    )
    # "positives": 10 ln 2 over 1 positive in the batch
    torch.testing.assert_close(
        _loss(LossConfig(neg_pos=3.0, normalize="positives"), batch)["cls_loss"],
        torch.tensor(10 * LN2),
    )


def test_class_and_box_weights():
    # 2 * 1.5 ln 2 + 0.5 * 0.45; the parts are reported unweighted
    out = _loss(LossConfig(cls_weight=2.0, box_weight=0.5), _case())
    _check(out, 1.5 * LN2, 0.45, 3 * LN2 + 0.225)


def test_normalize_by_positives():
    # two images, one positive in all: CE sum (ln 2 + 2 ln 2) + (ln 2 + ln 2) = 5 ln 2,
    # L1 sum 3.6 (image 2 masked out); both divided by 1 positive
    out = _loss(LossConfig(normalize="positives"), _two_images())
    _check(out, 5 * LN2, 3.6, 5 * LN2 + 3.6)


def test_ssd_preset_value():
    # smooth-L1 (sigma 1) sum 2.13; 3:1 mining keeps every anchor here (1 positive, 1
    # negative): CE sum 3 ln 2; both over 1 positive
    out = _loss(LossConfig.parse("ssd"), _case())
    _check(out, 3 * LN2, 2.13, 3 * LN2 + 2.13)


def test_loss_is_differentiable():
    cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks = _case()
    cls_preds.requires_grad_(True)
    bbox_preds.requires_grad_(True)
    for spec in ("chapter", "ssd", "cls=focal"):
        out = MultiBoxLoss(LossConfig.parse(spec))(
            cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks
        )
        (grad_cls, grad_box) = torch.autograd.grad(out["loss"], (cls_preds, bbox_preds))
        assert torch.isfinite(grad_cls).all() and grad_cls.abs().sum() > 0
        assert (grad_box[0, 4:] == 0).all()  # masked anchor: no gradient


def test_parse_presets():
    assert LossConfig.parse("chapter") == LossConfig()
    assert LossConfig.parse("") == LossConfig()
    assert LossConfig.parse("ssd") == LossConfig(
        box="smooth_l1", neg_pos=3.0, normalize="positives"
    )


def test_parse_key_values():
    assert LossConfig.parse("cls=focal, gamma=1.5, alpha=none") == LossConfig(
        cls="focal", gamma=1.5, alpha=None
    )
    assert LossConfig.parse("box=smooth_l1,sigma=3,neg_pos=3,normalize=positives") == LossConfig(
        box="smooth_l1", sigma=3.0, neg_pos=3.0, normalize="positives"
    )
    assert LossConfig.parse("cls_weight=2,box_weight=0.5").to_dict() == {
        **LossConfig().to_dict(),
        "cls_weight": 2.0,
        "box_weight": 0.5,
    }


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gama=2", "'gama=2'.*expected key=value"),
        ("focal", "'focal'.*expected key=value"),
        ("cls=huber", "cls='huber': choose from"),
        ("box=l2", "box='l2': choose from"),
        ("normalize=batch", "normalize='batch': choose from"),
    ],
)
def test_parse_rejects_bad_keys_and_choices(spec, message):
    with pytest.raises(ValueError, match=message):
        LossConfig.parse(spec)


def test_parse_bad_number_names_the_option():
    with pytest.raises(ValueError, match="gamma"):
        LossConfig.parse("cls=focal,gamma=abc")


def _iou_case():
    """B=1, A=2, K=2: anchor 0 = (0, 0, 0.5, 0.5) matched, its target offsets 0
    (the ground truth is the anchor itself), its prediction dx = 5 moves the box
    right by 5 * 0.5 / 10 = 0.25: (0.25, 0, 0.75, 0.5).

    IoU = 0.125 / 0.375 = 1/3; the enclosing box (0, 0, 0.75, 0.5) is the union,
    so GIoU = 1/3 too. DIoU adds centre distance^2 / enclosing diagonal^2 =
    0.25^2 / (0.75^2 + 0.5^2) = 1/13. Anchor 1 is background (masked out)."""
    cls_preds, cls_labels, _, _, bbox_masks = _case()
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    bbox_preds = torch.tensor([[5.0, 0.0, 0.0, 0.0, 3.0, 3.0, 3.0, 3.0]])
    bbox_labels = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    return (cls_preds, cls_labels, bbox_preds, bbox_labels, bbox_masks), anchors


@pytest.mark.parametrize(("kind", "expected"), [("giou", 2 / 3), ("diou", 2 / 3 + 1 / 13)])
def test_iou_box_losses_on_a_hand_computed_case(kind, expected):
    case, anchors = _iou_case()
    out = MultiBoxLoss(LossConfig(box=kind, normalize="positives"))(*case, anchors=anchors)
    # one positive: its CE ln 2 plus anchor 1's 2 ln 2, over 1 positive
    _check(out, 3 * LN2, expected, 3 * LN2 + expected)
    torch.testing.assert_close(
        iou_box_loss(kind, torch.tensor([[0.25, 0.0, 0.75, 0.5]]), anchors[:1]),
        torch.tensor([expected]),
    )


def test_iou_loss_with_chapter_normalisation_and_an_l1_term():
    case, anchors = _iou_case()
    config = LossConfig(box="giou", l1_weight=0.5)
    out = MultiBoxLoss(config)(*case, anchors=anchors[None])  # Tensor[1, A, 4] works too
    # per image, over 4A = 8 values: (2/3 + 0.5 * |5|) / 8
    _check(out, 1.5 * LN2, (2 / 3 + 2.5) / 8, 1.5 * LN2 + (2 / 3 + 2.5) / 8)


def test_iou_loss_is_zero_on_a_perfect_prediction_and_differentiable():
    case, anchors = _iou_case()
    bbox_preds = torch.zeros(1, 8, requires_grad=True)
    case = (case[0], case[1], bbox_preds, case[3], case[4])
    out = MultiBoxLoss(LossConfig.parse("box=ciou"))(*case, anchors=anchors)
    torch.testing.assert_close(out["box_loss"], torch.tensor(0.0))
    out["loss"].backward()
    assert torch.isfinite(bbox_preds.grad).all()


def test_iou_loss_needs_anchors():
    with pytest.raises(ValueError, match="anchors="):
        MultiBoxLoss(LossConfig(box="giou"))(*_iou_case()[0])


def test_parse_focal_giou_preset():
    assert LossConfig.parse("focal_giou") == FOCAL_GIOU
    assert (
        LossConfig.parse("cls=focal,gamma=2,alpha=0.25,box=giou,normalize=positives,box_weight=2")
        == FOCAL_GIOU
    )


def test_quality_focal_loss_is_the_focal_loss_when_the_quality_is_one():
    from tinyssd.losses import focal_loss, quality_focal_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    target = torch.tensor([0, 1, 2, 0, 2, 1])
    torch.testing.assert_close(
        quality_focal_loss(logits, target, torch.ones(6), 2.0, 0.25),
        focal_loss(logits, target, 2.0, 0.25),
    )


def test_quality_focal_loss_pulls_a_positive_score_to_its_box_iou():
    from tinyssd.losses import quality_focal_loss

    # object class 1 with quality 0.6: the loss is smallest where p_1 = 0.6 (and p_bg = 0.4)
    target, quality = torch.tensor([1]), torch.tensor([0.6])

    def loss_at(p1: float) -> float:
        logits = torch.tensor([[math.log(1 - p1), math.log(p1), -30.0]])
        return float(quality_focal_loss(logits, target, quality, 2.0, None))

    assert loss_at(0.6) < min(loss_at(0.5), loss_at(0.7), loss_at(0.95))
    assert loss_at(0.6) == pytest.approx(0.0, abs=1e-6)  # the modulating term |q - p| is 0


def test_the_iou_aware_target_equals_the_iou_of_the_decoded_box():
    from tinyssd.boxes import encode_offsets
    from tinyssd.losses import _box_quality

    anchors = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]])
    gt = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]])
    pred = torch.tensor([[0.1, 0.1, 0.3, 0.5], [0.5, 0.5, 0.9, 0.9]])  # half of the first box
    box_targets = encode_offsets(anchors, gt).reshape(1, -1)
    box_deltas = encode_offsets(anchors, pred).reshape(1, -1)
    positive = torch.tensor([[True, False]])
    quality = _box_quality(box_deltas, box_targets, positive, anchors)
    torch.testing.assert_close(quality, torch.tensor([[0.5, 0.0]]), atol=1e-5, rtol=0)


def test_qfl_giou_trains_like_focal_giou_from_the_model_outputs():
    from tinyssd.losses import QFL_GIOU, LossConfig, MultiBoxLoss

    assert LossConfig.parse("qfl_giou") == QFL_GIOU
    torch.manual_seed(0)
    anchors = torch.rand(1, 8, 2).repeat(1, 1, 2) + torch.tensor([0.0, 0.0, 0.2, 0.2])
    cls_logits = torch.randn(2, 8, 3, requires_grad=True)
    box_deltas = torch.randn(2, 32, requires_grad=True)
    cls_targets = torch.tensor([[0, 1, 0, 0, 2, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 2]])
    box_mask = (cls_targets > 0)[..., None].expand(-1, -1, 4).reshape(2, -1).float()
    box_targets = torch.randn(2, 32) * box_mask
    out = MultiBoxLoss(QFL_GIOU)(
        cls_logits, cls_targets, box_deltas, box_targets, box_mask, anchors
    )
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["cls_loss"] > 0
    assert cls_logits.grad is not None and box_deltas.grad.abs().sum() > 0
