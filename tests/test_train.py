import csv
import json

import pytest
import torch
from fixtures import write_tiny_bananas

from tinyssd.engine.checkpoint import read_checkpoint
from tinyssd.engine.train import METRIC_COLUMNS, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("data"), n_train=24, n_val=6, size=64)


def _train(data, out, **kw):
    args = dict(data=str(data), epochs=2, batch_size=8, image_size=64, progress=False)
    args["out"] = str(out) if out else None
    args.update(kw)
    return train(**args)


def _weights(path):
    tensors, meta = read_checkpoint(path)
    return {k: v for k, v in tensors.items() if k.startswith(("model.", "optim."))}, meta


def test_run_folder_has_config_metrics_pictures_and_checkpoints(tiny_data, tmp_path):
    run = _train(tiny_data, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["banana"] and config["num_classes"] == 1
    assert config["ssd"]["sizes"][0] == [0.2, 0.272] and config["train"]["lr"] == 0.2
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 <= float(r["class_err"]) <= 1 and float(r["images_per_s"]) > 0
        assert 0 <= float(r["val_AP50"]) <= 1 and 0 <= float(r["val_AP"]) <= 1
    for name in ("curves.png", "val_predictions.png"):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _weights(run / "last.safetensors")[1]["epoch"] == 2
    assert (run / "best.safetensors").is_file()


def test_same_seed_same_weights_on_cpu(tiny_data, tmp_path):
    a, _ = _weights(_train(tiny_data, tmp_path / "a", epochs=1) / "last.safetensors")
    b, _ = _weights(_train(tiny_data, tmp_path / "b", epochs=1) / "last.safetensors")
    c, _ = _weights(_train(tiny_data, tmp_path / "c", epochs=1, seed=1) / "last.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_resume_continues_bit_exact(tiny_data, tmp_path, augment):
    whole = _train(tiny_data, tmp_path / "whole", epochs=3, augment=augment)
    _train(tiny_data, tmp_path / "part", epochs=1, augment=augment)
    resumed = _train(tiny_data, None, epochs=3, augment=augment, resume=str(tmp_path / "part"))
    assert resumed == tmp_path / "part"
    a, meta_a = _weights(whole / "last.safetensors")
    b, meta_b = _weights(resumed / "last.safetensors")
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with (resumed / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


def test_stop_ap50_ends_training_once_reached(tiny_data, tmp_path):
    run = _train(tiny_data, tmp_path / "stop", epochs=5, stop_ap50=0.0)
    with (run / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]


def test_paths_may_be_given_as_path_objects(tiny_data, tmp_path):
    run = train(
        data=tiny_data, out=tmp_path / "run", epochs=1, batch_size=8, image_size=64, progress=False
    )
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"] == str(tiny_data) and run == tmp_path / "run"
