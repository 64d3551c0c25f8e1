"""--val-fraction: a val set split off the training images of data that has none."""

from __future__ import annotations

import json
import logging

import pytest
from fixtures import write_image, write_tiny_bananas

from tinyssd.cli import main
from tinyssd.data import Split, split_off_val
from tinyssd.data.base import Record
from tinyssd.engine.train import train


def _flat_voc(root, n=12):
    """What labelImg writes: NAME.png and NAME.xml side by side; 4 images of "rare"."""
    for i in range(n):
        write_image(root / f"{i}.png", 64, 64, seed=i)
        name = "rare" if i % 3 == 0 else "common"
        (root / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>64</width>"
            f"<height>64</height><depth>3</depth></size><object><name>{name}</name>"
            "<bndbox><xmin>8</xmin><ymin>10</ymin><xmax>40</xmax><ymax>50</ymax></bndbox>"
            "</object></annotation>"
        )
    return root


def _split(labels):
    records = [Record.make(f"{i}.png", [[0, 0, 5, 5]] * len(ls), ls) for i, ls in enumerate(labels)]
    return Split(records, ["a", "b"], root="data")


def test_split_off_val_is_seeded_and_stratified_by_the_rarest_class():
    split = _split([[1]] * 8 + [[1, 2]] * 4)  # class b (2) is in 4 images only
    train_part, val = split_off_val(split, 0.25, seed=3)
    val_names = {r.image.name for r in val.records}
    assert len(val.records) == 3 and len(train_part.records) == 9
    assert sum(2 in r.labels.tolist() for r in val.records) == 1  # 1 of the 4 b images
    assert val_names.isdisjoint(r.image.name for r in train_part.records)
    again = {r.image.name for r in split_off_val(split, 0.25, seed=3)[1].records}
    assert again == val_names
    seeds = {
        frozenset(r.image.name for r in split_off_val(split, 0.25, s)[1].records) for s in range(8)
    }
    assert len(seeds) > 1


def test_train_with_val_fraction_on_a_flat_voc_folder(tmp_path, caplog):
    data = _flat_voc(tmp_path / "labelimg")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        train(
            data=str(data),
            out=str(out),
            epochs=1,
            batch_size=4,
            image_size=64,
            recipe="chapter",
            progress=False,
            val_fraction=0.25,
        )
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "--val-fraction 0.25: 3 of 12 training images split off as val" in text
    assert "train 9 images, val 3" in text
    assert "val images are training images" not in text
    assert json.loads((out / "config.json").read_text())["train"]["val_fraction"] == 0.25


def test_without_val_fraction_the_header_warns_that_val_is_train(tmp_path, caplog):
    data = _flat_voc(tmp_path / "labelimg", n=4)
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        train(
            data=str(data),
            out=str(tmp_path / "run"),
            epochs=1,
            batch_size=4,
            image_size=64,
            recipe="chapter",
            progress=False,
        )
    assert any("4 of 4 val images are training images" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("value", "words"), [("0.2", "has its own val split"), ("1.5", "must be in [0, 1)")]
)
def test_val_fraction_is_refused_in_one_line(tmp_path, capsys, value, words):
    data = write_tiny_bananas(tmp_path / "bananas", n_train=4, n_val=2)
    args = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--val-fraction", value]
    assert main([*args, "--epochs", "1", "--image-size", "64", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--val-fraction" in err and words in err
    assert not (tmp_path / "run" / "last.safetensors").exists()
