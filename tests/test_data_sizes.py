"""--image-size auto: the input size chosen from the training boxes, and its resolver."""

import logging

import pytest
import torch
from fixtures import write_image

from tinyssd.config import TrainConfig
from tinyssd.data import Record
from tinyssd.data.sizes import auto_image_size, choose_image_size, finest_stride, size_cap
from tinyssd.data.voc import write_voc
from tinyssd.models.config import PRESETS


def _boxes(shorter_sides: list[float], image: tuple[float, float] = (640.0, 480.0)):
    """(box_sides Tensor[N, 2], image_sides Tensor[N, 2]): boxes twice as wide as high."""
    heights = torch.tensor(shorter_sides)
    return torch.stack([2 * heights, heights], 1), torch.tensor([image]).expand(len(heights), 2)


def test_small_boxes_get_the_first_size_where_they_span_two_cells():
    # shorter side 26.4 px of 480: 14.1 px at 256, 15.8 at 288, 17.6 at 320 >= 2 cells of 8
    size, reason = choose_image_size(*_boxes([26.4] * 9 + [200.0]), 256, 8)
    assert size == 320
    assert reason == (
        "10% of the training boxes are under 14.1 px at 256; the finest map's cells are 8 px: "
        "at 320 they span 2.2"
    )


def test_the_tenth_percentile_decides_not_the_smallest_box():
    # one tiny box in 20 is under the 10th percentile: the others (100 px of 480) decide
    assert choose_image_size(*_boxes([5.0] + [100.0] * 19), 256, 8)[0] == 256


def test_boxes_too_small_for_any_size_get_the_cap_of_twice_the_pixels():
    size, reason = choose_image_size(*_boxes([10.0] * 10), 256, 8)  # 5.3 px at 256
    assert size == 352 and "2 cells need 768, above the cap of 352" in reason
    assert choose_image_size(*_boxes([10.0] * 10), 300, 8)[0] == 416


def test_big_boxes_keep_the_models_size_never_less():
    size, reason = choose_image_size(*_boxes([100.0] * 10), 256, 8)
    assert size == 256 and reason.endswith("they span 6.7 cells already")
    assert choose_image_size(*_boxes([], (1.0, 1.0)), 256, 8) == (
        256,
        "no training boxes: the model's size",
    )


def test_a_coarser_finest_map_needs_a_larger_input():
    # 14.1 px at 256 spans 2 cells of 8 px at 320, but 2 cells of 16 px need 582: the cap
    assert choose_image_size(*_boxes([26.4] * 10), 256, 16)[0] == 352


@pytest.mark.parametrize(("default", "cap"), [(256, 352), (300, 416), (320, 448), (64, 64)])
def test_the_cap_is_the_largest_multiple_of_32_with_twice_the_pixels(default, cap):
    assert size_cap(default) == cap
    assert cap * cap <= 2 * default * default or cap == default


@pytest.mark.parametrize(
    ("name", "stride"),
    [("tiny_fpn", 8), ("ssd300_vgg16", 8), ("ssdlite320_mobilenet_v3_large", 16)],
)
def test_the_finest_stride_is_read_from_the_models_maps(name, stride):
    assert finest_stride(PRESETS[name]()) == stride


def _voc(root, boxes, difficult=None):
    """A VOC set of two 640 x 480 images per split, each with ``boxes`` (xyxy px)."""
    for split in ("train", "val"):
        records = [
            Record.make(
                write_image(root / "src" / f"{split}{i}.png", 64, 48),
                boxes,
                [1] * len(boxes),
                difficult=difficult,
                size=(480, 640),
            )
            for i in range(2)
        ]
        write_voc(root / "voc", split, records, ["cell"])
    return root / "voc"


def test_the_resolver_reads_the_training_boxes_without_difficult_ones(tmp_path):
    # 26 px of 480 high (14 px at 256); the difficult 4-px boxes are left out
    data = _voc(tmp_path, [[10, 10, 60, 36], [100, 100, 104, 104]], difficult=[False, True])
    size, reason = auto_image_size(str(data), "auto", 256, 8)
    assert size == 320 and "under 13.9 px at 256" in reason


def test_image_size_auto_resolves_from_the_data_and_logs_why(tmp_path, caplog):
    data = str(_voc(tmp_path, [[10, 10, 60, 36]]))
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        cfg = TrainConfig(data=data, image_size="auto", out="x").resolved()
        synthetic = TrainConfig(image_size="AUTO", out="x").resolved()
        tiled = TrainConfig(data=data, image_size="auto", tile=512, out="x").resolved()
    assert (cfg.image_size, synthetic.image_size, tiled.image_size) == (320, 256, 256)
    lines = [m for m in caplog.messages if m.startswith("--image-size auto")]
    assert lines == [
        "--image-size auto: 320 (10% of the training boxes are under 13.9 px at 256; "
        "the finest map's cells are 8 px: at 320 they span 2.2)",
        "--image-size auto: 256, the model's (the built-in synthetic set)",
        "--image-size auto: 256, the model's (--tile 512: tiles are at native resolution)",
    ]
    # the size to start from is --model's own: 16.3 px at 300 span 2 cells already
    ssd300 = TrainConfig(data=data, image_size="auto", model="ssd300_vgg16", out="x")
    assert ssd300.resolved().image_size == 300


def test_an_image_whose_size_cannot_be_read_is_left_out_and_counted(tmp_path, caplog):
    from fixtures import write_tiny_bananas

    from tinyssd.data.tiles import auto_tile

    data = write_tiny_bananas(tmp_path / "data", n_train=4, n_val=1, size=64)
    (data / "bananas_train" / "images" / "0.png").write_bytes(b"not an image")
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        size, _ = auto_image_size(str(data), "auto", 256, 8)
        side, reason = auto_tile(str(data), "auto", 256)
    counted = "1 training image(s) left out: no readable size in the header"
    assert caplog.messages.count(counted) == 2  # once for each auto option
    assert size == 256 and side == 0 and "median image side 64 px" in reason
