"""engine.inputs: splits -> fitted anchors -> datasets -> batches."""

import torch
from fixtures import write_tiny_bananas

from tinyssd.config import TrainConfig
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
