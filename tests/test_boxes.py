"""Box maths: IoU, corner <-> centre, and encode/decode as an inverse pair."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyssd.boxes import (
    MAX_LOG_SCALE,
    anchor_iou_blocks,
    batched_box_iou,
    block_rows,
    box_center_to_corner,
    box_corner_to_center,
    box_iou,
    decode_offsets,
    encode_offsets,
    normalise_boxes,
    paired_box_iou,
    scale_boxes,
)

d2l = pytest.importorskip("d2l.torch")

_SETTINGS = settings(max_examples=60, deadline=None)


def _cxcywh(n: int, centre=(0.0, 1.0), log_size=(-4.0, 0.0)):
    """Strategy: ``n`` centre boxes (float64 tensor), positive sizes."""
    c = st.floats(*centre, allow_nan=False)
    s = st.floats(*log_size, allow_nan=False)
    row = st.tuples(c, c, s, s).map(lambda r: (r[0], r[1], math.exp(r[2]), math.exp(r[3])))
    return st.lists(row, min_size=n, max_size=n).map(
        lambda rows: torch.tensor(rows, dtype=torch.float64)
    )


@st.composite
def corner_boxes(draw, min_n: int = 1, max_n: int = 12, dtype=torch.float32):
    """Strategy: ``Tensor[N, 4]`` xyxy boxes with positive width and height."""
    n = draw(st.integers(min_n, max_n))
    return box_center_to_corner(draw(_cxcywh(n))).to(dtype)


@st.composite
def anchors_and_boxes(draw):
    """Anchors and boxes within a moderate scale of them (the decode clamp never applies):
    centres up to 3 anchor sizes away, sizes 1/20 to 20 times the anchor's."""
    n = draw(st.integers(1, 12))
    anchors = draw(_cxcywh(n, log_size=(-3.0, 0.0)))
    rel = draw(_cxcywh(n, centre=(-3.0, 3.0), log_size=(-3.0, 3.0)))
    boxes = torch.cat(
        (anchors[:, :2] + rel[:, :2] * anchors[:, 2:], anchors[:, 2:] * rel[:, 2:]), dim=1
    )
    return box_center_to_corner(anchors), box_center_to_corner(boxes)


@_SETTINGS
@given(anchors_and_boxes())
def test_decode_inverts_encode(pair):
    anchors, boxes = pair
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        a, b = anchors.to(dtype), boxes.to(dtype)
        decoded = decode_offsets(a, encode_offsets(a, b))
        # encode adds eps = 1e-6 to wh_box / wh_anchor: an error of up to 1e-6 * wh_anchor
        wh = box_corner_to_center(a)[:, 2:].repeat(1, 2)
        assert ((decoded - b).abs() <= 1e-6 * wh + tol * (1 + b.abs())).all()


@_SETTINGS
@given(anchors_and_boxes())
def test_encode_inverts_decode(pair):
    anchors, boxes = pair
    offsets = encode_offsets(anchors, boxes)
    again = encode_offsets(anchors, decode_offsets(anchors, offsets))
    # log(eps + r) moves by about eps / r per encode; times 5, the size-offset scale
    ratio = box_corner_to_center(boxes)[:, 2:] / box_corner_to_center(anchors)[:, 2:]
    assert ((again[:, :2] - offsets[:, :2]).abs() <= 1e-9).all()
    assert ((again[:, 2:] - offsets[:, 2:]).abs() <= 5 * 1e-6 / ratio + 1e-9).all()


@_SETTINGS
@given(corner_boxes(), corner_boxes())
def test_iou_is_symmetric_and_in_unit_interval(boxes1, boxes2):
    iou = box_iou(boxes1, boxes2)
    assert iou.shape == (len(boxes1), len(boxes2))
    assert torch.equal(iou, box_iou(boxes2, boxes1).T)
    assert ((iou >= 0) & (iou <= 1)).all()


@_SETTINGS
@given(corner_boxes())
def test_iou_of_a_box_with_itself_is_one(boxes):
    torch.testing.assert_close(
        box_iou(boxes, boxes).diagonal(), torch.ones(len(boxes)), rtol=0, atol=1e-6
    )


def test_iou_hand_computed():
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7; disjoint boxes: 0
    boxes1 = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    boxes2 = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 1.0, 2.0]])
    torch.testing.assert_close(box_iou(boxes1, boxes2), torch.tensor([[1 / 7, 0.0, 0.5]]))


@_SETTINGS
@given(
    corner_boxes(min_n=1, max_n=20),
    st.lists(corner_boxes(min_n=3, max_n=3), min_size=1, max_size=4),
)
def test_batched_box_iou_equals_box_iou_per_image(anchors, per_image):
    boxes = torch.stack(per_image)  # (B, M, 4)
    batched = batched_box_iou(anchors, boxes)
    assert batched.shape == (len(per_image), 3, len(anchors))
    for b, gt in enumerate(per_image):
        assert torch.equal(batched[b], box_iou(gt, anchors))
        assert torch.equal(batched[b], box_iou(anchors, gt).T)


def _odd_boxes(g, n):
    """``Tensor[n, 4]``: boxes of every kind the IoU must survive: ordinary, zero-width,
    inverted (x2 < x1), partly outside [0, 1], with -0.0 coordinates."""
    boxes = _random_boxes(g, n) - 0.3
    boxes[::5, 2] = boxes[::5, 0]
    boxes[1::5] = boxes[1::5][:, [2, 1, 0, 3]]
    boxes[boxes.abs() < 0.05] = -0.0
    return boxes


def _box_iou_or_0(boxes1, boxes2):
    """``box_iou``, 0 where it divides 0 by 0 (two boxes without area): tinyssd's IoUs."""
    return box_iou(boxes1, boxes2).nan_to_num(0.0)


def test_paired_box_iou_is_box_iou_pair_by_pair():
    g = torch.Generator().manual_seed(0)
    boxes1, boxes2 = _odd_boxes(g, 30), _odd_boxes(g, 20)
    assert box_iou(boxes1, boxes2).isnan().any()
    for dtype in (torch.float32, torch.float64):
        b1, b2 = boxes1.to(dtype), boxes2.to(dtype)
        assert torch.equal(paired_box_iou(b1[:, None], b2), _box_iou_or_0(b1, b2))
        assert torch.equal(paired_box_iou(b1[:20], b2), _box_iou_or_0(b1[:20], b2).diagonal())


def test_iou_blocks_on_grid_anchors_equal_box_iou_bit_for_bit():
    # TinySSD's anchors share their x and y extents, whose overlaps are computed once each;
    # 3 x 40 boxes make more than one block (block_rows), and a caller may choose its own
    from tinyssd.anchors import AnchorGenerator
    from tinyssd.models.config import tiny_ssd

    config = tiny_ssd()
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    grid = AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")  # (5444, 4)
    assert block_rows(len(grid), "cpu") < 3 * 40
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        anchors = grid.to(dtype)
        boxes = torch.cat((_odd_boxes(g, 100), anchors[::97][:20])).to(dtype).reshape(3, 40, 4)
        batched = batched_box_iou(anchors, boxes)
        for b in range(3):
            assert torch.equal(batched[b], _box_iou_or_0(boxes[b], anchors))
        flat = boxes.reshape(-1, 4)
        blocks = [slice(0, 5), slice(5, 6), slice(6, 120)]
        for rows, iou in anchor_iou_blocks(anchors, flat, blocks):
            assert torch.equal(iou, _box_iou_or_0(flat[rows], anchors))


def test_decode_clamps_huge_size_offsets():
    anchors = torch.tensor([[0.4, 0.4, 0.6, 0.5], [0.0, 0.0, 0.01, 0.02]])
    offsets = torch.tensor([[0.0, 0.0, 1e4, 1e4], [3.0, -2.0, 1e4, 50.0]])
    boxes = decode_offsets(anchors, offsets)
    assert torch.isfinite(boxes).all()
    wh_box = box_corner_to_center(boxes)[:, 2:]
    wh_anchor = box_corner_to_center(anchors)[:, 2:]
    assert (wh_box <= wh_anchor * (1000 / 16) * (1 + 1e-6)).all()
    # the cap is reached: exp(log(1000/16)) = 62.5 times the anchor
    torch.testing.assert_close(wh_box[0], wh_anchor[0] * 62.5)
    assert math.isclose(MAX_LOG_SCALE, math.log(62.5))
    # the chapter's offset_inverse has no clamp: the same offsets give inf
    assert torch.isinf(d2l.offset_inverse(anchors, offsets)).any()


@_SETTINGS
@given(corner_boxes())
def test_corner_centre_round_trip(boxes):
    torch.testing.assert_close(
        box_center_to_corner(box_corner_to_center(boxes)), boxes, rtol=0, atol=1e-6
    )
    cxcywh = box_corner_to_center(boxes.double())
    torch.testing.assert_close(box_corner_to_center(box_center_to_corner(cxcywh)), cxcywh)


def test_corner_to_centre_hand_computed():
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.8]])
    torch.testing.assert_close(box_corner_to_center(boxes), torch.tensor([[0.3, 0.5, 0.4, 0.6]]))


def test_conversions_accept_batch_dimensions():
    boxes = torch.rand(2, 3, 4)
    boxes[..., 2:] += boxes[..., :2]
    torch.testing.assert_close(
        box_corner_to_center(boxes).reshape(-1, 4), box_corner_to_center(boxes.reshape(-1, 4))
    )


def _random_boxes(g, n):
    xy = torch.rand(n, 2, generator=g)
    return torch.cat((xy, xy + 0.01 + torch.rand(n, 2, generator=g)), dim=1)


@pytest.mark.parametrize("seed", range(5))
def test_equal_to_chapter_functions(seed):
    g = torch.Generator().manual_seed(seed)
    anchors, boxes = _random_boxes(g, 50), _random_boxes(g, 50)
    offsets = torch.randn(50, 4, generator=g)
    assert torch.equal(box_corner_to_center(boxes), d2l.box_corner_to_center(boxes))
    centres = box_corner_to_center(boxes)
    assert torch.equal(box_center_to_corner(centres), d2l.box_center_to_corner(centres))
    assert torch.equal(box_iou(anchors, boxes[:7]), d2l.box_iou(anchors, boxes[:7]))
    assert torch.equal(encode_offsets(anchors, boxes), d2l.offset_boxes(anchors, boxes))
    assert torch.equal(decode_offsets(anchors, offsets), d2l.offset_inverse(anchors, offsets))


def test_scale_boxes_multiplies_by_width_and_height_and_normalise_boxes_undoes_it():
    normalised = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.5, 0.75]])
    pixels = scale_boxes(normalised, (200, 400))  # height 200, width 400
    torch.testing.assert_close(
        pixels, torch.tensor([[0.0, 0.0, 400.0, 200.0], [100.0, 100.0, 200.0, 150.0]])
    )
    torch.testing.assert_close(normalise_boxes(pixels, (200, 400)), normalised)
    batched = scale_boxes(normalised.expand(3, 2, 4), (200, 400))  # any leading dims
    assert batched.shape == (3, 2, 4) and torch.equal(batched[2], pixels)
