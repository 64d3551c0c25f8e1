"""--resume says what it does: a finished run, a run stopped before its first checkpoint,
a path that does not exist."""

from __future__ import annotations

import logging

import pytest
from fixtures import write_tiny_bananas

from tinyssd.checkpoint import read_metadata
from tinyssd.cli import main
from tinyssd.engine import run_folder
from tinyssd.engine.train import train


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("data"), n_train=16, n_val=4, size=64)


def _train(data, out, **kw):
    args = dict(data=str(data), out=str(out), epochs=1, batch_size=8, image_size=64)
    return train(**(args | dict(progress=False, recipe="chapter") | kw))


def test_resume_of_a_finished_run_says_so_and_trains_nothing(tiny_data, tmp_path, caplog):
    run = _train(tiny_data, tmp_path / "run").path
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
        _train(data, out)
    monkeypatch.undo()
    assert (out / "config.json").is_file() and not list(out.glob("*.safetensors"))


def test_a_run_stopped_before_its_first_checkpoint_can_be_run_again_into_its_folder(
    tiny_data, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    _stopped_before_first_checkpoint(tiny_data, out, monkeypatch)
    _train(tiny_data, out)
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


def test_resume_of_a_missing_path_names_it_as_typed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["train", "--resume", "runs/nonexist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs/nonexist" in err and "config.json" not in err and len(err.splitlines()) == 1
