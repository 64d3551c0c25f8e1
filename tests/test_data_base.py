"""The data contract shared by every format: relabelling a split by another's classes."""

from pathlib import Path

import pytest
import torch

from tinyssd.data.base import DataError, Record, Split


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
