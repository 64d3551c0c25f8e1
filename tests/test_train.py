import csv
import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from fixtures import HEAP_PROBE, write_tiny_bananas

from tinyssd.checkpoint import read_checkpoint, read_metadata
from tinyssd.cli import main
from tinyssd.engine import run_folder
from tinyssd.engine.train import METRIC_COLUMNS, train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("data"), n_train=24, n_val=6, size=64)


def _train(data, out, **kw):
    # the chapter's recipe: these tests are about the run's mechanics, not the recipe
    args = dict(
        data=str(data), epochs=2, batch_size=8, image_size=64, progress=False, recipe="chapter"
    )
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
    assert resumed.path == tmp_path / "part"
    a, meta_a = _weights(whole / "last.safetensors")
    b, meta_b = _weights(resumed / "last.safetensors")
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k
    with (resumed / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3"]


@pytest.mark.parametrize("stop", ["stop_ap50", "stop_ap"])
def test_stop_ap50_ends_training_once_reached(tiny_data, tmp_path, stop):
    run = _train(tiny_data, tmp_path / "stop", epochs=5, **{stop: 0.0})
    with (run / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1"]


def test_an_unreached_stop_ap_trains_every_epoch(tiny_data, tmp_path):
    run = _train(tiny_data, tmp_path / "go", epochs=2, stop_ap=1.01)
    with (run / "metrics.csv").open() as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_paths_may_be_given_as_path_objects(tiny_data, tmp_path):
    run = train(
        data=tiny_data, out=tmp_path / "run", epochs=1, batch_size=8, image_size=64, progress=False
    )
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"] == str(tiny_data) and run.path == tmp_path / "run"


def test_resume_takes_last_not_best_and_reports_changed_settings(tiny_data, tmp_path, caplog):
    run = _train(tiny_data, tmp_path / "run", epochs=2)
    best = read_checkpoint(run / "best.safetensors")[1]["epoch"]
    caplog.set_level("INFO", logger="tinyssd")
    _train(tiny_data, None, epochs=3, lr=0.1, resume=str(run))
    assert "resumed " + str(run / "last.safetensors") + " at epoch 2" in caplog.text
    assert "lr changed from 0.2 to 0.1" in caplog.text
    assert best <= 2 and _weights(run / "last.safetensors")[1]["epoch"] == 3
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["lr"] == 0.1 and config["train"]["epochs"] == 3


def test_resume_with_other_data_is_refused_unless_forced(tiny_data, tmp_path):
    from fixtures import write_tiny_bananas

    from tinyssd.errors import UsageError

    other = write_tiny_bananas(tmp_path / "other", n_train=8, n_val=2, size=64, seed=1)
    run = _train(tiny_data, tmp_path / "run", epochs=1)
    with pytest.raises(UsageError, match="the run used --data"):
        _train(other, None, epochs=2, resume=str(run))
    _train(other, None, epochs=2, resume=str(run), force=True)


def test_an_existing_out_folder_is_not_overwritten(tiny_data, tmp_path):
    from tinyssd.errors import UsageError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="not empty"):
        _train(tiny_data, tmp_path / "mine", epochs=1)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    _train(tiny_data, tmp_path / "mine", epochs=1, exist_ok=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_runs_without_out_are_numbered(tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _train(tiny_data, None, epochs=1).path == Path("runs/train")
    assert _train(tiny_data, None, epochs=1).path == Path("runs/train2")


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_finite_checkpoint(tiny_data, tmp_path):
    from tinyssd.engine.train import TrainingError

    run = _train(tiny_data, tmp_path / "run", epochs=1)
    not_finite = r"^epoch 2(, step \d+: the loss is|: weight .* is not finite)"
    with pytest.raises(TrainingError, match=not_finite):
        _train(tiny_data, None, epochs=2, lr=1e30, resume=str(run))
    tensors, meta = _weights(run / "last.safetensors")
    assert meta["epoch"] == 1
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if v.is_floating_point())


def test_lr_1e6_from_scratch_stops_before_saving_any_weights(tiny_data, tmp_path):
    from tinyssd.engine.train import TrainingError

    with pytest.raises(TrainingError, match="try a lower --lr"):
        _train(tiny_data, tmp_path / "run", epochs=2, lr=1e6)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_an_empty_val_split_warns_and_best_is_last(tmp_path, caplog):
    from fixtures import write_tiny_bananas

    data = write_tiny_bananas(tmp_path / "data", n_train=16, n_val=1, size=64)
    (data / "bananas_val" / "label.csv").write_text("img_name,label,xmin,ymin,xmax,ymax\n")
    for f in (data / "bananas_val" / "images").iterdir():
        f.unlink()
    caplog.set_level("WARNING", logger="tinyssd")
    run = _train(data, tmp_path / "run", epochs=2)
    assert "no usable val images" in caplog.text
    assert _weights(run / "best.safetensors")[1]["epoch"] == 2


ALLOCATOR_PROBE = (
    """
import sys, torch, tinyssd
from fixtures import write_tiny_bananas
data = write_tiny_bananas(__import__("pathlib").Path(sys.argv[1]), n_train=8, n_val=2, size=64)
tinyssd.train(data=data, out=sys.argv[1] + "/run", epochs=1, batch_size=8, image_size=64,
              progress=False, recipe="chapter")
"""
    + HEAP_PROBE
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting")
def test_the_allocator_setting_ends_with_training(tmp_path):
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""  # a large tensor is mapped afresh again, not heap-kept


def test_the_checkpoint_keeps_the_val_f1_threshold_and_predict_uses_it(tiny_data, tmp_path):
    import tinyssd
    from tinyssd.evaluation import evaluate
    from tinyssd.inference import predict_dataset

    run = _train(tiny_data, tmp_path / "run", epochs=2)
    _, meta = read_checkpoint(run / "last.safetensors")
    stored = meta["extra"]["score_threshold"]
    det = tinyssd.load(run / "last.safetensors", precision="fp32")
    assert det.score_threshold == pytest.approx(stored)
    # it is the F1-optimal threshold of the saved weights on val, as evaluate() computes it
    from tinyssd.data import DetectionDataset, load_split

    val = DetectionDataset(load_split(tiny_data, "val"), 64)
    preds = predict_dataset(det.model, val, 8)
    targets = [val.targets_in_pixels(i) for i in range(len(val))]
    assert evaluate(preds, targets)["f1_threshold"] == pytest.approx(stored, abs=1e-4)


def test_atss_assignment_trains_and_is_recorded(tiny_data, tmp_path):
    run = _train(tiny_data, tmp_path / "run", epochs=1, assigner="atss")
    assert json.loads((run / "config.json").read_text())["train"]["assigner"] == "atss"
    weights, _ = _weights(run / "last.safetensors")
    assert all(bool(torch.isfinite(v).all()) for v in weights.values() if v.is_floating_point())


def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(
    tiny_data, tmp_path, monkeypatch, capsys
):
    import errno

    from tinyssd import checkpoint
    from tinyssd.cli import main

    writes = []
    save_file = checkpoint.save_file

    def disk_fills_in_epoch_2(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) <= 2:  # epoch 1: last and best
            return save_file(tensors, filename, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() raises it

    monkeypatch.setattr(checkpoint, "save_file", disk_fills_in_epoch_2)
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--recipe", "chapter"]
    args += ["--epochs", "2", "--batch-size", "8", "--image-size", "64", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.splitlines()[-1]
        == f"tinyssd: error: {out / 'last.safetensors'}: No space left on device"
    )
    assert _weights(out / "last.safetensors")[1]["epoch"] == 1
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_epochs_without_val_leave_it_blank_and_best_comes_from_evaluated_ones(
    tiny_data, tmp_path, caplog
):
    with caplog.at_level("INFO", logger="tinyssd"):
        run = _train(tiny_data, tmp_path / "run", epochs=5, val_interval=2)
    assert "val evaluated after 3 of the 5 epochs (--val-interval 2): epochs 2 and 4-5" in (
        caplog.text
    )
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [bool(r["val_AP"]) for r in rows] == [False, True, False, True, True]
    assert "epoch 1/5: loss" in caplog.text and "val AP50 -, AP -" in caplog.text
    best_epoch = _weights(run / "best.safetensors")[1]["epoch"]
    assert best_epoch in (2, 4, 5)
    assert json.loads((run / "config.json").read_text())["train"]["val_interval"] == 2


# --resume says what it does: a finished run, a run stopped before its first checkpoint.


def test_resume_of_a_finished_run_says_so_and_trains_nothing(tiny_data, tmp_path, caplog):
    run = _train(tiny_data, tmp_path / "run", epochs=1).path
    written = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tinyssd"):
        result = train(resume=str(run), progress=False)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{run}: finished at epoch 1 of 1; pass --epochs M to train further"]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == written
    assert result.path == run and result.final["epoch"] == 1 and result.classes
    # --epochs M trains further, from where the run stopped
    train(resume=str(run), epochs=2, progress=False)
    assert read_metadata(run / "last.safetensors")["epoch"] == 2


def _stopped_before_first_checkpoint(data, out, monkeypatch):
    def interrupted(self, *args, **kwargs):
        self.close()  # what the process's end does to the lock
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunFolder, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(data, out, epochs=1)
    monkeypatch.undo()
    assert (out / "config.json").is_file() and not list(out.glob("*.safetensors"))


def test_a_run_stopped_before_its_first_checkpoint_can_be_run_again_into_its_folder(
    tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    _stopped_before_first_checkpoint(tiny_data, out, monkeypatch)
    _train(tiny_data, out, epochs=1)
    assert read_metadata(out / "last.safetensors")["epoch"] == 1


def test_a_run_stopped_before_its_first_checkpoint_can_be_resumed(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _stopped_before_first_checkpoint(tiny_data, out, monkeypatch)
    train(resume=str(out), progress=False)
    assert read_metadata(out / "last.safetensors")["epoch"] == 1


def test_a_folder_of_the_user_is_still_refused(tiny_data, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--epochs", "1"]
    assert main([*args, "--image-size", "64", "--recipe", "chapter", "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
