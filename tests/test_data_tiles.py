"""Training on tiles: the boxes each tile carries, the crops the dataset holds, --tile auto."""

import argparse
import logging

import pytest
import torch
from fixtures import write_image

from tinyssd.cli import build_parser
from tinyssd.config import TrainConfig
from tinyssd.data import DetectionDataset, Record, Split
from tinyssd.data import dataset as dataset_module
from tinyssd.data.base import read_image
from tinyssd.data.synthetic import make_synthetic
from tinyssd.data.tiles import choose_tile, tile_split


def _split(path, boxes, labels, size):
    return Split([Record.make(path, boxes, labels, size=size)], ["a", "b"], path.parent)


def test_training_tiles_carry_exactly_the_mapped_boxes(tmp_path):
    # 1000 x 1000, tiles of 400 at overlap 0.2: starts 0, 300, 600 on each axis
    boxes = [
        [10, 10, 50, 50],  # in the first tile only
        [310, 10, 350, 50],  # in the first two (the overlap)
        [380, 100, 420, 140],  # half in the first (kept, clipped), whole in the second
        [690, 20, 710, 60],  # in the second (90% inside: clipped) and the third
    ]
    split = _split(tmp_path / "big.png", boxes, [1, 2, 1, 2], (1000, 1000))
    tiles = {r.window: r for r in tile_split(split, 400, 0.2, seed=0).records}
    first, second, third = (
        tiles[(0, 0, 400, 400)],
        tiles[(300, 0, 700, 400)],
        tiles[(600, 0, 1000, 400)],
    )
    torch.testing.assert_close(
        first.boxes, torch.tensor([[10, 10, 50, 50], [310, 10, 350, 50], [380, 100, 400, 140.0]])
    )
    assert first.labels.tolist() == [1, 2, 1] and first.size == (400, 400)
    torch.testing.assert_close(
        second.boxes,
        torch.tensor([[10, 10, 50, 50], [80, 100, 120, 140], [390, 20, 400, 60.0]]),
    )
    assert second.labels.tolist() == [2, 1, 2]
    torch.testing.assert_close(third.boxes, torch.tensor([[90, 20, 110, 60.0]]))
    # and back: each tile's boxes plus its corner are the image's boxes clipped to the tile
    image_boxes = split.records[0].boxes
    for rec, kept in ((first, [0, 1, 2]), (second, [1, 2, 3]), (third, [3])):
        x0, y0, x1, y1 = rec.window
        corner = torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        low, high = torch.tensor([x0, y0] * 2).float(), torch.tensor([x1, y1] * 2).float()
        clipped = torch.maximum(torch.minimum(image_boxes[kept], high), low)
        torch.testing.assert_close(rec.boxes + corner, clipped)


def test_empty_tiles_are_sampled_one_for_ten_with_boxes_and_seeded(tmp_path):
    # one box in the top-left tile of a 3 x 3 grid: 1 tile with boxes, 8 empty, 1 kept
    split = _split(tmp_path / "big.png", [[10, 10, 50, 50]], [1], (1000, 1000))
    records = tile_split(split, 400, 0.2, seed=0).records
    assert len(records) == 2
    assert [len(r.labels) for r in records].count(0) == 1
    again = tile_split(split, 400, 0.2, seed=0).records
    assert [r.window for r in again] == [r.window for r in records]


def test_images_no_larger_than_one_and_a_half_tiles_stay_whole(tmp_path):
    split = _split(tmp_path / "small.png", [[10, 10, 50, 50]], [1], (600, 500))
    (rec,) = tile_split(split, 400, 0.2).records
    assert rec.window is None and rec.boxes.tolist() == [[10, 10, 50, 50]]


@pytest.mark.parametrize("cache", ["ram", "none", "disk"])
def test_the_dataset_holds_each_tile_cut_at_native_resolution(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    path = write_image(tmp_path / "data" / "big.png", 900, 700, seed=3)
    image = read_image(path)
    split = _split(path, [[100, 100, 140, 130], [500, 400, 530, 450]], [1, 2], None)
    tiles = tile_split(split, 400, 0.2, seed=0)
    assert all(r.window is not None for r in tiles.records)
    reads = []

    def counting_read(p, limits=None):
        reads.append(p)
        return read_image(p, limits)

    monkeypatch.setattr(dataset_module, "read_image", counting_read)
    ds = DetectionDataset(tiles, image_size=400, cache=cache)  # tile 400 -> S 400: no resize
    assert len(ds) == len(tiles.records)
    for i, rec in enumerate(ds.records):
        x0, y0, x1, y1 = rec.window
        held, target = ds[i]
        assert torch.equal(held, image[:, y0:y1, x0:x1])
        torch.testing.assert_close(target["boxes"] * 400, tiles.records[i].boxes)
    if cache == "ram":
        assert len(reads) == 1  # one decode for all the tiles of the image


def test_choose_tile_stays_off_for_banana_sized_images_and_cuts_large_ones():
    # the bananas: 256-px images, 30-60-px boxes, input 256
    assert choose_tile([256.0] * 10, [30.0, 45.0, 60.0], 256)[0] == 0
    # large images with big objects: shrinking whole keeps them learnable
    assert choose_tile([2000.0] * 10, [300.0, 400.0], 256)[0] == 0
    tile, reason = choose_tile([2000.0] * 10, [20.0, 30.0, 40.0], 256)
    assert tile == 480 and "tiles of 480 px" in reason  # 256 * 30 / 16, rounded to 32
    assert choose_tile([4000.0], [100.0], 256)[0] == 512  # capped at 2 S


def test_tile_auto_stays_off_on_small_images_and_turns_on_for_large_ones(tmp_path, caplog):
    small = make_synthetic(tmp_path / "small", train=4, val=1, size=256)
    large = make_synthetic(
        tmp_path / "large", train=2, val=1, size=1000, objects=10, object_px=(20, 40)
    )
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        assert TrainConfig(data=str(small), tile="auto", out="x").resolved().tile == 0
        assert TrainConfig(data=str(large), tile="auto", out="x").resolved().tile >= 256
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--tile auto")]
    assert len(lines) == 2 and "no tiling" in lines[0] and "tiles of" in lines[1]
    # the default recipe decides as --tile auto does; the chapter recipe never tiles unless asked
    assert TrainConfig(data=str(large), out="x").resolved().tile >= 256
    assert TrainConfig(data=str(small), out="x").resolved().tile == 0
    assert TrainConfig(data=str(large), recipe="chapter", out="x").resolved().tile == 0


def test_tile_values_are_checked_with_the_option_named():
    from tinyssd.errors import UsageError

    assert TrainConfig(tile="512", out="x").resolved().tile == 512
    assert TrainConfig(tile=0, out="x").resolved().tile == 0
    with pytest.raises(UsageError, match="--tile 'big'"):
        TrainConfig(tile="big", out="x").resolved()
    with pytest.raises(UsageError, match="--tile-overlap 1.0"):
        TrainConfig(tile=512, tile_overlap=1.0, out="x").resolved()


def test_tile_options_are_in_train_help():
    train = next(
        a.choices["train"]
        for a in build_parser()._actions
        if isinstance(a, argparse._SubParsersAction)
    )
    text = train.format_help()
    assert "--tile TILE" in text and "--tile-overlap" in text
