"""The one per-image loop of every reader, and what it needs from a format."""

import pickle

import pytest
import torch
from fixtures import write_image, write_tiny_bananas

from tinyssd.data import FORMATS, DetectionDataset, load_split
from tinyssd.data.bananas import parse_bananas_rows
from tinyssd.data.base import (
    BAD_LABEL_FILE,
    MISSING_IMAGE,
    NO_LABELS,
    OUTSIDE_ROOT,
    TOO_LARGE_IMAGE,
    TOO_MANY_BOXES,
    UNKNOWN_CLASS,
    DataError,
    Report,
)
from tinyssd.data.dataset import hflip, hflip_boxes
from tinyssd.data.limits import DataLimits
from tinyssd.data.reader import Annotation, Item, Skip, read_records
from tinyssd.options import FORMAT_NAMES


def test_the_formats_are_the_names_options_lists_in_its_order():
    assert tuple(FORMATS) == FORMAT_NAMES


def test_a_banana_row_parses_without_any_image(tmp_path):
    rows = [(0, [1.0, 2.0, 5.0, 6.0], 2), (3, [0.0, 0.0, 1.0, 1.0], 3)]
    ann = parse_bananas_rows(Item(tmp_path / "a.png", rows), csv_path=tmp_path / "label.csv")
    assert ann.boxes == [[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 1.0, 1.0]] and ann.labels == [1, 4]
    assert ann.describe(1, UNKNOWN_CLASS) == (f"{tmp_path / 'label.csv'}:3", "label 3")


def _parse(item, size):
    if item.labels == "broken":
        raise DataError(f"{item.image}.txt:1: not a number")
    if item.labels == "skip":
        raise Skip(MISSING_IMAGE, item.image, "listed but not found")
    boxes = [[0, 0, i + 1, i + 1] for i in range(item.labels)]
    return Annotation(boxes, [1] * item.labels, lambda i, kind: ("labels", str(i)), empty="none")


def test_the_loop_counts_every_problem_and_applies_the_box_limit(tmp_path):
    root = tmp_path / "data"
    items = [
        Item(None, where=root / "ghost.png", note="no image with this name"),
        Item(tmp_path / "outside.png", 1),
        Item(root / "broken.png", "broken"),
        Item(root / "gone.png", "skip"),
        Item(root / "empty.png", 0),
        Item(root / "crowded.png", 5),
    ]
    report = Report()
    records = read_records(items, _parse, 1, [root], report, DataLimits(max_boxes=3))
    assert [r.image.name for r in records] == ["empty.png", "crowded.png"]
    assert len(records[1].labels) == 3
    assert report.items[MISSING_IMAGE] == [
        f"{root / 'ghost.png'}: no image with this name",
        f"{root / 'gone.png'}: listed but not found",
    ]
    assert report.items[OUTSIDE_ROOT] == [str(tmp_path / "outside.png")]
    assert report.items[BAD_LABEL_FILE] == [f"{root / 'broken.png'}.txt:1: not a number"]
    assert report.items[NO_LABELS] == [f"{root / 'empty.png'}: none"]
    assert report.count(TOO_MANY_BOXES) == 1


def test_one_flip_mirrors_boxes_in_pixels_and_normalised():
    boxes = torch.tensor([[10.0, 2.0, 30.0, 8.0]])
    torch.testing.assert_close(hflip_boxes(boxes, 100), torch.tensor([[70.0, 2.0, 90.0, 8.0]]))
    torch.testing.assert_close(hflip_boxes(hflip_boxes(boxes / 100)), boxes / 100)
    image = torch.arange(6).reshape(1, 2, 3)
    flipped, _ = hflip(image, boxes, 3)
    assert flipped.tolist() == [[[2, 1, 0], [5, 4, 3]]]


def test_limits_reach_the_readers_and_the_dataset_without_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSSD_MAX_PIXELS", raising=False)
    root = write_tiny_bananas(tmp_path, n_train=3, n_val=1, size=32)
    write_image(root / "bananas_train/images/0.png", 40, 40)
    small = DataLimits(max_pixels=32 * 32)
    report = Report()
    dataset = DetectionDataset(load_split(root, "train"), 32, report=report, limits=small)
    assert len(dataset) == 2 and report.count(TOO_LARGE_IMAGE) == 1
    assert pickle.loads(pickle.dumps(dataset)).limits == small  # what loader workers get


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_reader_takes_the_box_limit(tmp_path, name):
    from tinyssd.data.convert import convert

    root = write_tiny_bananas(tmp_path / "src", n_train=4, n_val=1, size=32)
    csv = root / "bananas_train/label.csv"
    csv.write_text(csv.read_text() + "0.png,0,1,1,10,10\n0.png,0,2,2,12,12\n")
    src = root if name == "bananas" else convert(root, name, tmp_path / name)
    assert max(len(r.labels) for r in load_split(src, "train", name).records) == 3
    report = Report()
    split = load_split(src, "train", name, report, DataLimits(max_boxes=1))
    assert [len(r.labels) for r in split.records] == [1] * 4
    assert report.count(TOO_MANY_BOXES) == 1
