"""The data contract shared by every format: image decoding, relabelling a split."""

from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import png_header
from PIL import Image

from tinyssd.data.base import DataError, ImageTooLarge, Record, Split, image_size, read_image


def _split(classes, labels):
    records = [Record.make(Path(f"{i}.png"), [[0, 0, 4, 4]], [lab]) for i, lab in enumerate(labels)]
    return Split(records, classes, Path("val"))


def test_val_classes_are_matched_to_train_classes_by_name():
    val = _split(["dog", "cat"], [1, 2]).with_classes(["bird", "cat", "dog"])
    assert val.classes == ["bird", "cat", "dog"]
    assert [int(r.labels[0]) for r in val.records] == [3, 2]


def test_same_classes_leave_the_split_as_it_is():
    val = _split(["a", "b"], [2])
    assert val.with_classes(["a", "b"]) is val


def test_count_named_banana_classes_keep_their_numbers():
    # a banana-layout val split with only label 0 is called ["banana"]; train has two labels
    val = _split(["banana"], [1]).with_classes(["class0", "class1"])
    assert val.classes == ["class0", "class1"]
    assert torch.equal(val.records[0].labels, torch.tensor([1]))


def test_more_val_classes_than_train_classes_is_an_error():
    with pytest.raises(DataError, match="do not match the training classes"):
        _split(["a", "b", "c"], [3]).with_classes(["x", "y"])


@pytest.mark.parametrize(
    "mode,value,expected",
    [
        ("L", 200, (200, 200, 200)),
        ("RGBA", (10, 20, 30, 128), (10, 20, 30)),
        ("P", 1, (0, 255, 0)),  # palette index 1 -> green
        ("I;16", 65535, (255, 255, 255)),  # 16-bit full scale -> 8-bit full scale
        ("I;16", 30000, (117, 117, 117)),
    ],
)
def test_any_image_mode_reads_as_8_bit_rgb(tmp_path, mode, value, expected):
    image = Image.new(mode, (6, 4), value)
    if mode == "P":
        image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.save(tmp_path / "x.png")
    got = read_image(tmp_path / "x.png")
    assert got.dtype == torch.uint8 and got.shape == (3, 4, 6)
    assert got[:, 0, 0].tolist() == list(expected)


def test_exif_orientation_is_applied(tmp_path):
    # stored 6 wide x 4 high with a red left column; orientation 6 = rotate 90 deg clockwise
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[:, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.png", exif=exif)
    got = read_image(tmp_path / "r.png")
    assert got.shape == (3, 6, 4)  # shown 4 wide x 6 high
    assert image_size(tmp_path / "r.png") == (6, 4)
    assert got[0, 0, :].tolist() == [255] * 4 and got[0, -1, :].tolist() == [0] * 4  # red on top


def test_a_corrupt_image_is_a_one_line_error_naming_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match=r"bad\.png: unreadable image") as e:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("value, expected", [(0.5, 128), (1.0, 255), (0.0, 0), (200.0, 200)])
def test_a_float_image_reads_at_its_brightness(tmp_path, value, expected):
    # TIFF mode "F": 0..1 floats are scaled by 255; larger values are taken as 0..255
    Image.new("F", (5, 3), value).save(tmp_path / "f.tif")
    got = read_image(tmp_path / "f.tif")
    assert got.shape == (3, 3, 5) and got.unique().tolist() == [expected]


def test_a_data_error_escapes_control_characters():
    e = DataError("bad\x1b[2J\nname.png: unreadable")
    assert str(e) == "bad\\x1b[2J\\nname.png: unreadable"


@pytest.mark.parametrize(
    "value, flag",
    [(0, False), (1, True), (2, True), ("0", False), ("1", True), ("false", False),
     ("True", True), (" yes ", True), ("no", False), ("", False), (None, False), (0.0, False)],
)  # fmt: skip
def test_flags_are_read_as_their_format_means_them(value, flag):
    from tinyssd.data.values import read_flag

    assert read_flag(value) is flag


@pytest.mark.parametrize("value", ["maybe", [1], float("nan")])
def test_a_value_that_is_no_flag_is_a_value_error(value):
    from tinyssd.data.values import read_flag

    with pytest.raises(ValueError, match="is not a 0/1 flag"):
        read_flag(value)


def test_an_image_pillow_calls_a_decompression_bomb_is_over_the_budget_not_unreadable(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(16384, 16384))  # 268 M pixels: Pillow refuses it first
    with pytest.raises(
        ImageTooLarge, match=r"huge\.png: too large to decode: .*268435456 pixels.*budget is \d+"
    ):
        read_image(path)
