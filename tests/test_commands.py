"""tinyssd.commands: what ``tinyssd predict`` reads from folders and where it writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures import save_untrained_checkpoint, write_image

import tinyssd
from tinyssd.cli import main
from tinyssd.commands import predict_files


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    return save_untrained_checkpoint(folder / "model.safetensors", ["a"], image_size=64)


@pytest.fixture(scope="module")
def det(checkpoint):
    return tinyssd.load(checkpoint, precision="fp32")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_a_fifo_in_a_folder_is_skipped_and_named_never_opened(
    det, checkpoint, tmp_path, caplog, capsys
):
    photo = write_image(tmp_path / "photos" / "a.png")
    pipe = tmp_path / "photos" / "pipe.jpg"
    os.mkfifo(pipe)  # opening it to read would wait for a writer forever
    skipped: list[str] = []
    lines = list(predict_files(det, [photo.parent], out=tmp_path / "o", skipped=skipped))
    assert [d["image"] for d in lines] == [str(photo)]
    assert skipped == [str(pipe)]
    assert f"skipped: {pipe}: not a regular file (FIFO, device or socket); not opened" in (
        caplog.messages
    )
    argv = ["predict", str(photo.parent), "--weights", str(checkpoint)]
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 1
    assert "tinyssd: 1 input(s) skipped or cut short" in capsys.readouterr().err


def test_without_out_each_call_writes_a_new_runs_predict_folder(det, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photo = write_image(tmp_path / "photos" / "a.png")
    first = next(iter(predict_files(det, [photo], threshold=0)))["picture"]
    earlier = Path(first).read_bytes()
    second = next(iter(predict_files(det, [photo], threshold=0)))["picture"]
    assert (first, second) == ("runs/predict/a.png", "runs/predict2/a.png")
    assert Path(first).read_bytes() == earlier
    assert not (tmp_path / "predictions").exists()
