"""Anchor boxes: the chapter's multibox_prior (fixed for non-square maps) and the generator."""

import math

import pytest
import torch

from tinyssd.anchors import (
    AnchorGenerator,
    anchor_miss_rate,
    fit_anchor_ratios,
    fit_anchor_sizes,
    grid_anchors,
    multibox_prior,
)
from tinyssd.boxes import box_corner_to_center
from tinyssd.models.config import tiny_ssd

d2l = pytest.importorskip("d2l.torch")

TINY = tiny_ssd()


@pytest.mark.parametrize("side", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("level", range(5))
def test_multibox_prior_equals_chapter_on_square_maps(side, level):
    sizes, ratios = list(TINY.sizes[level]), list(TINY.ratios[level])
    fmap = torch.zeros(2, 8, side, side)
    ours = multibox_prior(fmap, sizes, ratios)
    assert ours.shape == (1, side * side * (len(sizes) + len(ratios) - 1), 4)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, d2l.multibox_prior(fmap, sizes, ratios))


def test_multibox_prior_one_cell_spelled_out():
    # centre (0.5, 0.5); (s, r) = (0.5, 1), (0.25, 1), (0.5, 2), (0.5, 1/2);
    # w = s sqrt(r), h = s / sqrt(r): 0.5 sqrt(2) / 2 = 0.353553, 0.5 / sqrt(2) / 2 = 0.176777
    anchors = multibox_prior(torch.zeros(1, 1, 1, 1), sizes=[0.5, 0.25], ratios=[1, 2, 0.5])
    expected = torch.tensor(
        [
            [
                [0.25, 0.25, 0.75, 0.75],
                [0.375, 0.375, 0.625, 0.625],
                [0.146447, 0.323223, 0.853553, 0.676777],
                [0.323223, 0.146447, 0.676777, 0.853553],
            ]
        ]
    )
    torch.testing.assert_close(anchors, expected, rtol=0, atol=1e-6)


def test_multibox_prior_order_is_row_major_cells_then_anchors():
    # a 2x3 map (h=2, w=3), one anchor per cell: centres ((j + .5) / 3, (i + .5) / 2)
    anchors = multibox_prior(torch.zeros(1, 1, 2, 3), sizes=[0.1], ratios=[1])[0]
    centres = box_corner_to_center(anchors)[:, :2]
    expected = torch.tensor([[(j + 0.5) / 3, (i + 0.5) / 2] for i in range(2) for j in range(3)])
    torch.testing.assert_close(centres, expected)


@pytest.mark.parametrize("h, w", [(2, 4), (4, 2), (3, 5), (16, 9)])
def test_non_square_map_anchor_area_is_size_squared(h, w):
    sizes, ratios = [0.3, 0.2], [1, 2, 0.5]
    fmap = torch.zeros(1, 1, h, w)
    # per cell: (0.3, 1), (0.2, 1), (0.3, 2), (0.3, 1/2); ratios 2 and 1/2 use s_1 = 0.3
    area = torch.tensor([0.09, 0.04, 0.09, 0.09]).repeat(h * w)
    aspect = torch.tensor([1, 1, 2, 0.5]).repeat(h * w)

    wh = box_corner_to_center(multibox_prior(fmap, sizes, ratios)[0])[:, 2:]
    torch.testing.assert_close(wh[:, 0] * wh[:, 1], area)
    torch.testing.assert_close(wh[:, 0] / wh[:, 1], aspect)

    # the chapter's widths carry a stray h / w: its areas are s^2 * h / w
    chapter_wh = box_corner_to_center(d2l.multibox_prior(fmap, sizes, ratios)[0])[:, 2:]
    chapter_area = chapter_wh[:, 0] * chapter_wh[:, 1]
    assert not torch.allclose(chapter_area, area)
    torch.testing.assert_close(chapter_area, area * h / w)


def test_multibox_prior_uses_the_feature_map_device_and_ignores_its_values():
    a = multibox_prior(torch.zeros(1, 3, 4, 4), [0.2], [1, 2])
    b = multibox_prior(torch.randn(5, 1, 4, 4), [0.2], [1, 2])
    assert torch.equal(a, b)
    assert a.device == torch.device("cpu")


def _tiny_generator():
    return AnchorGenerator(TINY.sizes, TINY.ratios)


TINY_SHAPES = [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]


def test_generator_concatenates_maps_in_order():
    anchors = _tiny_generator()(TINY_SHAPES, "cpu")
    parts = [
        multibox_prior(torch.zeros(1, 1, h, w), s, r)[0]
        for (h, w), s, r in zip(TINY_SHAPES, TINY.sizes, TINY.ratios)
    ]
    assert anchors.shape == (5444, 4)
    assert torch.equal(anchors, torch.cat(parts))


def test_generator_caches_per_shapes_and_device():
    gen = _tiny_generator()
    first = gen(TINY_SHAPES, "cpu")
    assert gen(TINY_SHAPES, torch.device("cpu")) is first
    assert gen([torch.Size(s) for s in TINY_SHAPES], "cpu") is first
    other = gen([(48, 48), (24, 24), (12, 12), (6, 6), (1, 1)], "cpu")
    assert other is not first
    assert other.shape == (4 * (48**2 + 24**2 + 12**2 + 6**2 + 1), 4)
    assert gen(TINY_SHAPES, "cpu") is first


def test_generator_counts_anchors_per_cell():
    assert _tiny_generator().num_anchors_per_cell() == [4] * 5
    assert AnchorGenerator([[0.1], [0.2, 0.3]], [[1, 2, 3], [1]]).num_anchors_per_cell() == [3, 2]


def test_generator_rejects_mismatched_lists():
    with pytest.raises(ValueError, match="2 size lists but 1 ratio lists"):
        AnchorGenerator([[0.1], [0.2]], [[1]])


def test_ratio_anchors_use_the_first_size():
    # the ratio-4 anchor uses s_1 = 0.4: 0.4 * 2 = 0.8 wide, 0.4 / 2 = 0.2 high
    anchors = multibox_prior(torch.zeros(1, 1, 1, 1), sizes=[0.4, 0.1], ratios=[1, 4])[0]
    wh = box_corner_to_center(anchors)[:, 2:]
    torch.testing.assert_close(wh[2], torch.tensor([0.4 * math.sqrt(4), 0.4 / math.sqrt(4)]))


def _planted_boxes() -> torch.Tensor:
    """100 square boxes each of sides 0.1, 0.2, 0.4 and 0.8, as (w, h)."""
    sides = torch.tensor([0.1, 0.2, 0.4, 0.8]).repeat_interleave(100)
    return torch.stack((sides, sides), dim=1)


def test_fit_anchor_sizes_recovers_planted_sizes():
    fitted = fit_anchor_sizes(_planted_boxes(), num_maps=2, sizes_per_map=2)
    assert fitted == ((0.1, 0.2), (0.4, 0.8))
    one_per_map = fit_anchor_sizes(_planted_boxes(), num_maps=4, sizes_per_map=1)
    assert one_per_map == ((0.1,), (0.2,), (0.4,), (0.8,))


def test_fit_anchor_sizes_uses_the_geometric_size_and_spread():
    wh = torch.tensor([[0.4, 0.1]] * 10)  # sqrt(0.4 * 0.1) = 0.2
    assert fit_anchor_sizes(wh, 1, 1) == ((0.2,),)
    # spread 2 doubles the log-distance from the median: 0.2 and 0.8 -> 0.1 and 1.6 (clamped 1)
    wh = torch.tensor([[0.2, 0.2]] * 10 + [[0.8, 0.8]] * 10)
    assert fit_anchor_sizes(wh, 2, 1, spread=2.0) == ((0.1,), (1.0,))
    with pytest.raises(ValueError, match="no boxes"):
        fit_anchor_sizes(torch.zeros(0, 2), 1, 1)


def test_fit_anchor_ratios_median_first():
    # ratios 0.5, 1 and 2, 100 boxes each: median 1, then the 1/4 and 3/4 quantiles
    wh = torch.tensor([[0.1, 0.2]] * 100 + [[0.2, 0.2]] * 100 + [[0.2, 0.1]] * 100)
    assert fit_anchor_ratios(wh, 3) == (1.0, 0.5, 2.0)
    assert fit_anchor_ratios(wh, 1) == (1.0,)


def test_anchor_miss_rate_before_and_after_fitting():
    # one 4x4 map: anchor centres at 0.125, 0.375, ...; boxes of side 0.1 on the centres
    centres = (torch.arange(4) + 0.5) / 4
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    c = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 4)
    boxes = c + torch.tensor([-0.05, -0.05, 0.05, 0.05])
    big = grid_anchors(4, 4, [0.25], [1])  # IoU 0.01 / 0.0625 = 0.16: every box missed
    assert anchor_miss_rate(big, boxes) == 1.0
    sizes = fit_anchor_sizes(boxes[:, 2:] - boxes[:, :2], 1, 1)
    fitted = grid_anchors(4, 4, sizes[0], [1])
    assert anchor_miss_rate(fitted, boxes) == 0.0
    assert anchor_miss_rate(big, boxes, iou_threshold=0.1) == 0.0
    assert anchor_miss_rate(big, torch.zeros(0, 4)) == 0.0
