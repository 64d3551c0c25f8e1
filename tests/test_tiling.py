"""Tiles of large images: coverage, boxes mapped to tiles and back, merging at the borders."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyssd.tiling import boxes_in_window, merge_detections, tile_starts, tile_windows


def test_tile_starts_spread_the_tiles_evenly_and_end_at_the_edge():
    assert tile_starts(1000, 400, 0.2) == [0, 300, 600]
    assert tile_starts(400, 400, 0.2) == [0]
    assert tile_starts(300, 400, 0.2) == [0]  # smaller than a tile: one, the whole side
    assert tile_starts(401, 400, 0.0) == [0, 1]


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 3000),
    width=st.integers(1, 3000),
    tile=st.integers(16, 1024),
    overlap=st.sampled_from([0.0, 0.1, 0.2, 0.5]),
)
def test_tiles_cover_the_image_with_the_given_overlap(height, width, tile, overlap):
    windows = tile_windows((height, width), tile, overlap)
    covered = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in windows.tolist():
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)
        covered[y0:y1, x0:x1] = True
    assert bool(covered.all())
    for starts in (tile_starts(width, tile, overlap), tile_starts(height, tile, overlap)):
        for a, b in zip(starts, starts[1:]):
            assert (a + tile) - b >= overlap * tile - 1  # neighbours share the overlap (rounding)


def test_a_tile_keeps_the_boxes_mostly_inside_it_in_its_own_pixels():
    boxes = torch.tensor(
        [
            [110.0, 120.0, 130.0, 150.0],  # inside
            [190.0, 100.0, 230.0, 110.0],  # 10 of 40 px wide inside: dropped
            [170.0, 100.0, 210.0, 110.0],  # 30 of 40 inside: kept, clipped
            [500.0, 500.0, 510.0, 510.0],  # elsewhere
        ]
    )
    labels = torch.tensor([1, 2, 3, 1])
    window = torch.tensor([100, 100, 200, 200])
    tile_boxes, tile_labels = boxes_in_window(boxes, labels, window)
    assert tile_labels.tolist() == [1, 3]
    torch.testing.assert_close(
        tile_boxes, torch.tensor([[10.0, 20.0, 30.0, 50.0], [70.0, 0.0, 100.0, 10.0]])
    )
    # and back: the tile's boxes plus its corner are the (clipped) image boxes, exactly
    torch.testing.assert_close(
        tile_boxes + torch.tensor([100.0, 100.0] * 2), boxes[[0, 2]].clamp(max=200)
    )


def test_merging_removes_the_duplicate_found_in_two_overlapping_tiles():
    windows = torch.tensor([[0, 0, 100, 100], [80, 0, 180, 100]])
    # one object at image x 85..95 seen by both tiles, one seen only by the second
    first = {
        "boxes": torch.tensor([[85.0, 10.0, 95.0, 20.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    second = {
        "boxes": torch.tensor([[5.0, 10.0, 15.5, 20.0], [50.0, 50.0, 60.0, 60.0]]),
        "scores": torch.tensor([0.8, 0.7]),
        "labels": torch.tensor([1, 1]),
    }
    merged = merge_detections([first, second], windows, nms_threshold=0.45, max_detections=10)
    assert merged["scores"].tolist() == pytest.approx([0.9, 0.7])
    torch.testing.assert_close(
        merged["boxes"], torch.tensor([[85.0, 10.0, 95.0, 20.0], [130.0, 50.0, 140.0, 60.0]])
    )


def test_merging_keeps_overlapping_boxes_of_different_classes():
    windows = torch.tensor([[0, 0, 100, 100], [50, 0, 150, 100]])
    a = {
        "boxes": torch.tensor([[60.0, 0.0, 70.0, 10.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    b = {
        "boxes": torch.tensor([[10.0, 0.0, 20.0, 10.0]]),
        "scores": torch.tensor([0.8]),
        "labels": torch.tensor([2]),
    }
    merged = merge_detections([a, b], windows, 0.45, 10)
    assert merged["labels"].tolist() == [1, 2]
