"""Boxes turned with the EXIF orientation, checked against Pillow's own transpose."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tinyssd.data.base import EXIF_FRAME, Record, Report
from tinyssd.data.exif import exif_boxes, to_display_frame

W, H = 12, 7
BOX = (2, 1, 5, 3)  # xyxy in the stored 12 x 7 pixels


def stored_image(path, orientation):
    arr = np.zeros((H, W), dtype=np.uint8)
    x1, y1, x2, y2 = BOX
    arr[y1:y2, x1:x2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_boxes_move_where_exif_transpose_moves_their_pixels(tmp_path, orientation):
    path = stored_image(tmp_path / "a.png", orientation)
    with Image.open(path) as im:
        shown = np.asarray(ImageOps.exif_transpose(im))
    ys, xs = np.nonzero(shown)
    expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    moved = exif_boxes(torch.tensor([BOX], dtype=torch.float32), orientation, W, H)
    assert moved[0].tolist() == [float(v) for v in expected]


def test_the_docstring_example():
    moved = exif_boxes(torch.tensor([[0.0, 0, 1, 4]]), 6, width=6, height=4)
    assert moved.tolist() == [[0, 0, 4, 1]]


def test_only_an_annotation_sized_as_the_stored_image_is_turned(tmp_path):
    path = stored_image(tmp_path / "a.png", 8)
    report = Report()
    before = Record.make(path, [BOX], [1], size=(H, W))
    after = to_display_frame(before, report)
    assert after.size == (W, H) and after.boxes.tolist() == [[1, 7, 3, 10]]
    assert report.count(EXIF_FRAME) == 1
    shown = Record.make(path, [BOX], [1], size=(W, H))
    assert to_display_frame(shown, report) is shown and report.count(EXIF_FRAME) == 1
    unsized = Record.make(path, [BOX], [1])
    assert to_display_frame(unsized, report) is unsized
