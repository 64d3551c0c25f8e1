"""engine.inputs: splits -> fitted anchors -> datasets -> batches."""

import json
import logging

import pytest
import torch
from fixtures import write_image, write_tiny_bananas

from tinyssd.cli import main
from tinyssd.config import TrainConfig
from tinyssd.data import Split, split_off_val
from tinyssd.data.base import Record
from tinyssd.data.check import fit_model_anchors
from tinyssd.data.transforms import AnchorBoundedAugment, SSDAugment
from tinyssd.engine.distributed import GlobalBatchSampler
from tinyssd.engine.inputs import (
    flip_rows,
    make_datasets,
    make_transform,
    model_config,
    read_batches,
    read_splits,
    stack_dataset,
)
from tinyssd.engine.train import train
from tinyssd.models.anchor_fit import miss_rate
from tinyssd.models.config import tiny_fpn


def test_flip_rows_mirrors_images_and_boxes_and_keeps_padding():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).reshape(2, 3, 2, 4)
    labels = torch.tensor([[[1, 0.1, 0.2, 0.4, 0.6], [0, 0, 0, 0, 0]]] * 2)  # class 0 pads
    flip = torch.tensor([True, False])
    out_images, out_labels = flip_rows(images, labels, flip)
    for b in range(2):
        if flip[b]:
            assert torch.equal(out_images[b], images[b].flip(-1))
            torch.testing.assert_close(out_labels[b, 0], torch.tensor([1, 0.6, 0.2, 0.9, 0.6]))
        else:
            assert torch.equal(out_images[b], images[b])
        torch.testing.assert_close(out_labels[b, 1], labels[b, 1])  # padding row untouched


def test_make_transform_picks_the_papers_or_the_anchor_bounded_parts():
    assert make_transform("none", 64, 0.1) is None
    assert make_transform("flip", 64, 0.1) is None  # whole-batch flips, no per-image work
    assert isinstance(make_transform("ssd", 64, 0.1), SSDAugment)
    bounded = make_transform("bounded:expand,flip", 64, 0.1)
    assert isinstance(bounded, AnchorBoundedAugment)
    assert bounded.expand and bounded.flip and not bounded.crop and bounded.min_anchor == 0.1


def test_auto_anchors_fit_the_training_boxes_and_say_so(tmp_path, caplog):
    data = write_tiny_bananas(tmp_path, n_train=24, n_val=4, size=64)
    cfg = TrainConfig(data=str(data), model="tiny_fpn", anchors="auto", image_size=64).resolved()
    caplog.set_level("INFO", logger="tinyssd")
    splits = read_splits(cfg)
    fitted = model_config(cfg, splits)
    assert "anchors fitted to 24 training boxes" in caplog.text
    preset = tiny_fpn()
    assert fitted.anchors_per_cell() == preset.anchors_per_cell()  # same tensors
    train_ds, _ = make_datasets(cfg, splits, fitted)
    images, labels = stack_dataset(train_ds)
    boxes = labels[labels[..., 0] > 0][:, 1:]
    assert miss_rate(fitted, boxes, 64) < miss_rate(preset, boxes, 64)


def test_batches_repeat_for_the_same_seed_and_epoch(tmp_path):
    data = write_tiny_bananas(tmp_path, n_train=10, n_val=2, size=64)
    cfg = TrainConfig(data=str(data), image_size=64, recipe="chapter").resolved()
    splits = read_splits(cfg)
    train_ds, _ = make_datasets(cfg, splits, model_config(cfg, splits))
    stacked = stack_dataset(train_ds)

    def epoch(number):
        sampler = GlobalBatchSampler(len(train_ds), 4, seed=0, flip=True)
        sampler.set_epoch(number)
        return list(read_batches(train_ds, sampler, stacked=stacked))

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def test_data_check_with_a_model_picks_the_anchors_training_picks(tmp_path):
    data = write_tiny_bananas(tmp_path, n_train=24, n_val=4, size=64)
    cfg = TrainConfig(data=str(data), model="tiny_fpn", anchors="auto", image_size=64).resolved()
    trained = model_config(cfg, read_splits(cfg))
    checked = fit_model_anchors(data, "auto", "tiny_fpn", 64)
    assert checked.config == trained
    assert checked.boxes == 24 and not checked.kept_preset


def test_auto_anchors_keep_the_preset_where_it_matches_more_boxes_in_both_paths(
    tmp_path, monkeypatch
):
    import tinyssd.models.anchor_fit as anchor_fit

    data = write_tiny_bananas(tmp_path, n_train=24, n_val=4, size=64)
    cfg = TrainConfig(data=str(data), model="tiny_fpn", anchors="auto", image_size=64).resolved()
    rates = iter([0.0, 1.0] * 2)  # the preset misses no box, the fitted anchors every one
    monkeypatch.setattr(anchor_fit, "miss_rate", lambda *a, **k: next(rates))
    trained = model_config(cfg, read_splits(cfg))
    checked = fit_model_anchors(data, "auto", "tiny_fpn", 64)
    assert checked.kept_preset and checked.config == trained
    assert trained.sizes == tiny_fpn().sizes and trained.ratios == tiny_fpn().ratios


# --val-fraction: a val set split off the training images of data that has none.
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
