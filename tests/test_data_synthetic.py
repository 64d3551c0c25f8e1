"""The built-in procedural data set: deterministic, readable as bananas, varied, cached."""

import hashlib
import os

import numpy as np
import pytest
import torch

from tinyssd.data import DataError, read_bananas
from tinyssd.data.synthetic import SHAPES, ensure_synthetic, make_synthetic


def digest(root):
    """sha1 over every file's relative path and bytes."""
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return make_synthetic(root, train=40, val=8, classes=4, seed=0, size=128)


def test_same_seed_gives_the_same_bytes_and_another_seed_other_images(synth, tmp_path):
    again = make_synthetic(tmp_path / "again", train=40, val=8, classes=4, seed=0, size=128)
    other = make_synthetic(tmp_path / "other", train=40, val=8, classes=4, seed=1, size=128)
    assert digest(again) == digest(synth)
    assert digest(other) != digest(synth)
    a, b = (r / "bananas_train" / "images" / "0.png" for r in (synth, other))
    assert a.read_bytes() != b.read_bytes()


def test_an_image_does_not_depend_on_how_many_are_written(synth, tmp_path):
    fewer = make_synthetic(tmp_path / "fewer", train=5, val=0, classes=4, seed=0, size=128)
    for i in range(5):
        name = f"bananas_train/images/{i}.png"
        assert (fewer / name).read_bytes() == (synth / name).read_bytes()


def test_reads_back_as_bananas_with_named_classes(synth):
    assert (synth / "classes.txt").read_text().split() == [n for n, _ in SHAPES[:4]]
    train, val = read_bananas(synth, "train"), read_bananas(synth, "val")
    assert train.classes == ["disc", "square", "triangle", "star"]
    assert len(train.records) == 40 and len(val.records) == 8
    assert [r.image.name for r in train.records[:3]] == ["0.png", "1.png", "2.png"]
    rows = (synth / "bananas_train" / "label.csv").read_text().splitlines()
    assert rows[0] == "img_name,label,xmin,ymin,xmax,ymax"
    assert sum(len(r.labels) for r in train.records) == len(rows) - 1
    labels = torch.cat([r.labels for r in train.records])
    assert labels.min() >= 1 and labels.max() <= 4  # 0-based in the CSV, 1..C when read


def test_boxes_lie_inside_the_image_and_are_not_empty(synth):
    boxes = torch.cat([r.boxes for s in ("train", "val") for r in read_bananas(synth, s).records])
    assert len(boxes) > 0
    assert (boxes >= 0).all() and (boxes <= 128).all()
    assert (boxes[:, 0] < boxes[:, 2]).all() and (boxes[:, 1] < boxes[:, 3]).all()


def test_classes_object_counts_sizes_and_shapes_vary(synth):
    records = read_bananas(synth, "train").records
    counts = [len(r.labels) for r in records]
    assert 0 in counts and max(counts) >= 3
    assert set(torch.cat([r.labels for r in records]).tolist()) == {1, 2, 3, 4}
    boxes = torch.cat([r.boxes for r in records])
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = (w * h).sqrt() / 128
    assert side.min() < 0.15 and side.max() > 0.45
    ratio = w / h
    assert ratio.min() < 0.75 and ratio.max() > 1.35


def test_background_is_textured_not_flat(synth):
    from PIL import Image

    empty = next(r for r in read_bananas(synth, "train").records if len(r.labels) == 0)
    pixels = np.asarray(Image.open(empty.image), dtype=np.float32)
    assert pixels.std(axis=(0, 1)).min() > 4


def test_a_smaller_rewrite_removes_the_images_it_no_longer_writes(tmp_path):
    make_synthetic(tmp_path, train=6, val=2, classes=2, size=64)
    make_synthetic(tmp_path, train=3, val=2, classes=2, size=64)
    names = sorted(p.name for p in (tmp_path / "bananas_train" / "images").iterdir())
    assert names == ["0.png", "1.png", "2.png"]


@pytest.mark.parametrize("kw", [{"classes": 0}, {"classes": len(SHAPES) + 1}, {"size": 8}])
def test_impossible_settings_are_one_line_errors(tmp_path, kw):
    with pytest.raises(DataError, match=next(iter(kw))):
        make_synthetic(tmp_path, train=1, val=1, **kw)


SMALL = {"train": 4, "val": 2, "classes": 2, "size": 64}


def test_ensure_synthetic_writes_once_then_reuses_the_cache(tmp_path):
    root = ensure_synthetic(tmp_path, **SMALL)
    assert root.parent == tmp_path and root.name.startswith("synthetic-v1-")
    assert len(read_bananas(root, "train").records) == 4
    stamp = (root / "bananas_train" / "label.csv").stat().st_mtime_ns
    assert ensure_synthetic(tmp_path, **SMALL) == root
    assert (root / "bananas_train" / "label.csv").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary folder left
    assert ensure_synthetic(tmp_path, **{**SMALL, "seed": 1}) != root


def test_ensure_synthetic_ignores_and_removes_a_half_written_set(tmp_path):
    name = "synthetic-v1-t4-v2-c2-s0-64px"
    dead_pid = 2**22 + 7  # above the default pid_max, so no process has it
    half = tmp_path / f".{name}.partial-{dead_pid}"
    (half / "bananas_train").mkdir(parents=True)
    (half / "bananas_train" / "label.csv").write_text("img_name,label,xmin,ymin,xmax,ymax\n")
    root = ensure_synthetic(tmp_path, **SMALL)
    assert root.name == name
    assert len(read_bananas(root, "train").records) == 4
    assert not half.exists()


def test_ensure_synthetic_defaults_to_the_tinyssd_cache_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    root = ensure_synthetic(**SMALL)
    assert root.parent == tmp_path / "cache"
    assert os.path.isfile(root / "classes.txt")
