"""Anchor boxes: the chapter's multibox_prior (fixed for non-square maps) and the generator."""

import math

import pytest
import torch

from tinyssd.anchors import AnchorGenerator, multibox_prior
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
