"""tinyssd.commands: what ``tinyssd predict`` and ``eval`` read and where they write; how
``eval`` pairs the data's classes with the model's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fixtures import save_untrained_checkpoint, write_image, write_tiny_bananas

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


def test_predict_without_out_never_writes_over_an_earlier_result(
    checkpoint, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    image = write_image(tmp_path / "photos" / "a.png")
    args = ["predict", str(image), "--weights", str(checkpoint), "--threshold", "0"]
    assert main(args) == 0
    first = (tmp_path / "runs" / "predict" / "a.png").read_bytes()
    write_image(image, seed=1)  # another picture under the same name
    assert main(args) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [d["picture"] for d in lines] == ["runs/predict/a.png", "runs/predict2/a.png"]
    assert (tmp_path / "runs" / "predict" / "a.png").read_bytes() == first
    assert not (tmp_path / "predictions").exists()


def test_eval_without_out_writes_a_new_report_folder_each_time(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = write_tiny_bananas(tmp_path / "data", n_train=2, n_val=2, size=64)
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["banana"], image_size=64)
    for _ in range(2):
        assert main(["eval", "--weights", str(ckpt), "--data", str(data)]) == 0
    for run in ("eval", "eval2"):
        assert (tmp_path / "runs" / run / "results.json").is_file()
        assert (tmp_path / "runs" / run / "PR_curve.png").is_file()
    assert not (tmp_path / "PR_curve.png").exists()


# A model scored on data of other classes is an error unless the user says how to pair them.
BCCD = ["Platelets", "RBC", "WBC"]


@pytest.fixture(scope="module")
def bananas(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("bananas"), n_train=2, n_val=3, size=64)


@pytest.fixture(scope="module")
def bccd_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "bccd.safetensors"
    return save_untrained_checkpoint(path, BCCD, image_size=64)


def _eval(model, data, tmp_path, *extra):
    out = tmp_path / "report"
    args = ["eval", "--weights", str(model), "--data", str(data), "--out", str(out)]
    return main([*args, "--json", str(tmp_path / "m.json"), *extra]), out


def test_eval_of_other_classes_is_a_one_line_error_naming_both(
    bananas, bccd_model, tmp_path, capsys
):
    rc, out = _eval(bccd_model, bananas, tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "['banana']" in err and str(BCCD) in err and "--classes-map" in err
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_classes_map_pairs_the_data_with_the_model(bananas, bccd_model, tmp_path):
    rc, out = _eval(bccd_model, bananas, tmp_path, "--classes-map", "banana=RBC")
    assert rc == 0
    instances = {
        c["class"]: c["instances"]
        for c in json.loads((out / "results.json").read_text())["classes"]
    }
    # the 3 bananas are scored as RBC (the model's second class), not as Platelets
    assert instances == {"Platelets": 0, "RBC": 3, "WBC": 0, "all": 3}
    assert (tmp_path / "m.json").is_file()


def test_force_scores_by_position_with_a_warning(bananas, bccd_model, tmp_path, caplog):
    rc, _ = _eval(bccd_model, bananas, tmp_path, "--force")
    assert rc == 0
    assert any("--force" in r.getMessage() and "position" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ("banana", "not OLD=NEW"),
        ("apple=RBC", "'apple' is not a class of the data"),
        ("banana=Banana", "'Banana' is not a class of the model"),
    ],
)
def test_a_bad_classes_map_names_the_option(bananas, bccd_model, tmp_path, capsys, mapping, words):
    rc, _ = _eval(bccd_model, bananas, tmp_path, "--classes-map", mapping)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--classes-map" in err and words in err


def test_data_of_a_subset_of_the_model_classes_is_matched_by_name(tmp_path, bananas):
    model = save_untrained_checkpoint(tmp_path / "m.safetensors", ["apple", "banana"], 64)
    rc, out = _eval(model, bananas, tmp_path)
    assert rc == 0 and (out / "results.json").is_file()
