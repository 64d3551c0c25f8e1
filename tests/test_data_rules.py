"""The rules every reader applies: which boxes it keeps, which files it may open."""

import os

import pytest
import torch

from tinyssd.data.base import (
    BAD_BOX,
    OUTSIDE_ROOT,
    SPECIAL_FILE,
    TOO_MANY_BOXES,
    UNKNOWN_CLASS,
    DataError,
    Report,
)
from tinyssd.data.limits import DataLimits
from tinyssd.data.rules import image_problem, is_inside, keep_boxes


def describe(i, kind):
    return "labels.txt", f"box {i} {'class' if kind == UNKNOWN_CLASS else 'empty'}"


def test_unknown_classes_and_empty_boxes_are_dropped_and_reported():
    boxes = torch.tensor([[0.0, 0, 5, 5], [0, 0, 5, 5], [5, 0, 5, 5], [0, 0, 5, 5]])
    report = Report()
    keep = keep_boxes(boxes, [1, 9, 1, 0], 2, "a.png", report, describe)
    assert keep == [0]
    assert report.items[UNKNOWN_CLASS] == ["labels.txt: box 1 class", "labels.txt: box 3 class"]
    assert report.items[BAD_BOX] == ["labels.txt: box 2 empty"]


def test_an_unknown_class_is_reported_as_such_even_when_its_box_is_empty():
    report = Report()
    assert keep_boxes([[5, 5, 1, 1]], [3], 2, "a.png", report, describe) == []
    assert report.count(UNKNOWN_CLASS) == 1 and report.count(BAD_BOX) == 0


def test_boxes_over_the_limit_are_dropped_with_one_entry_per_image(monkeypatch):
    boxes = [[0, 0, i + 1, i + 1] for i in range(7)]
    report = Report()
    limits = DataLimits(max_boxes=3)
    assert keep_boxes(boxes, [1] * 7, 1, "a.png", report, describe, limits) == [0, 1, 2]
    assert report.items[TOO_MANY_BOXES] == [
        "a.png: 7 boxes, kept the first 3 (raise it with TINYSSD_MAX_BOXES)"
    ]
    monkeypatch.setenv("TINYSSD_MAX_BOXES", "4")
    assert DataLimits.from_env().max_boxes == 4
    assert len(keep_boxes(boxes, [1] * 7, 1, "a.png", Report(), describe)) == 4


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_box_limit_in_the_environment_is_a_one_line_error(monkeypatch, value):
    monkeypatch.setenv("TINYSSD_MAX_BOXES", value)
    with pytest.raises(DataError, match="TINYSSD_MAX_BOXES=.*not a positive number of boxes"):
        DataLimits.from_env()


def test_paths_are_judged_with_symlinks_and_dots_resolved(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "images/a.png").write_bytes(b"x")
    (root / "images/link.png").symlink_to(tmp_path / "secret.png")
    (root / "images/inner.png").symlink_to(root / "images/a.png")
    os.mkfifo(root / "images/fifo.png")
    assert image_problem(root / "images/a.png", [root]) is None
    assert image_problem(root / "images/inner.png", [root]) is None
    assert image_problem(root / "images/../../secret.png", [root]) == OUTSIDE_ROOT
    assert image_problem(root / "images/link.png", [root]) == OUTSIDE_ROOT
    assert image_problem(tmp_path / "secret.png", [root]) == OUTSIDE_ROOT
    assert image_problem(root / "images/fifo.png", [root]) == SPECIAL_FILE
    assert image_problem(root / "images/missing.png", [root]) is None  # the caller's to say
    assert is_inside(tmp_path / "secret.png", [root, tmp_path])
