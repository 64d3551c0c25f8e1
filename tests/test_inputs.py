"""engine.inputs: splits -> fitted anchors -> datasets -> batches."""

import torch
from fixtures import write_tiny_bananas

from tinyssd.config import TrainConfig
from tinyssd.data.transforms import AnchorBoundedAugment, SSDAugment
from tinyssd.engine.inputs import (
    batches,
    flip_batch,
    make_datasets,
    make_transform,
    model_config,
    read_splits,
    stack_dataset,
)
from tinyssd.models.anchor_fit import miss_rate
from tinyssd.models.config import tiny_fpn


def test_flip_batch_mirrors_images_and_boxes_and_keeps_padding():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.uint8).reshape(2, 3, 2, 4)
    labels = torch.tensor([[[1, 0.1, 0.2, 0.4, 0.6], [0, 0, 0, 0, 0]]] * 2)  # class 0 pads
    g = torch.Generator().manual_seed(0)
    flip = torch.rand(2, generator=torch.Generator().manual_seed(0)) < 0.5
    out_images, out_labels = flip_batch(images, labels, g)
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
    fitted = model_config(cfg, splits.train)
    assert "anchors fitted to 24 training boxes" in caplog.text
    preset = tiny_fpn()
    assert fitted.anchors_per_cell() == preset.anchors_per_cell()  # same tensors
    train_ds, _ = make_datasets(cfg, splits, fitted)
    images, labels = stack_dataset(train_ds)
    boxes = labels[labels[..., 0] > 0][:, 1:]
    assert miss_rate(fitted, boxes, 64) < miss_rate(preset, boxes, 64)


def test_batches_repeat_for_the_same_seed_and_epoch(tmp_path):
    data = write_tiny_bananas(tmp_path, n_train=10, n_val=2, size=32)
    cfg = TrainConfig(data=str(data), image_size=32, recipe="chapter").resolved()
    splits = read_splits(cfg)
    train_ds, _ = make_datasets(cfg, splits, model_config(cfg, splits.train))
    stacked = stack_dataset(train_ds)
    a = list(batches(train_ds, 4, 0, 1, stacked=stacked, flip=True))
    b = list(batches(train_ds, 4, 0, 1, stacked=stacked, flip=True))
    c = list(batches(train_ds, 4, 0, 2, stacked=stacked, flip=True))
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c, strict=True))
