"""The end of a run: the result tinyssd.train returns, results.json and the pictures, the
log lines (from Python and in a log file), TensorBoard, and tinyssd eval's report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import write_tiny_bananas

from tinyssd.engine.train import TrainResult, train

PNG = b"\x89PNG\r\n\x1a\n"
PICTURES = (
    "labels.png",
    "val_predictions.png",
    "confusion_matrix.png",
    "P_curve.png",
    "R_curve.png",
    "F1_curve.png",
    "PR_curve.png",
)
ARGS = dict(epochs=2, batch_size=8, image_size=64, progress=False, recipe="chapter")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("data"), n_train=24, n_val=6, size=64)


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("runs") / "run"
    return train(data=str(tiny_data), out=str(out), tensorboard=True, **ARGS)


def test_train_returns_the_run_folder_and_its_metrics(run):
    assert isinstance(run, TrainResult)
    assert os.fspath(run) == str(run) == str(run.path) and (run / "x") == run.path / "x"
    assert run.final["epoch"] == 2 and 0 <= run.final["val_AP"] <= 1
    assert run.best["val_AP"] == max(run.best["val_AP"], run.final["val_AP"])
    assert [r["class"] for r in run.classes] == ["banana", "all"]
    banana, total = run.classes
    assert banana["images"] == 6 and banana["instances"] == 6 and total["images"] == 6
    assert 0 <= banana["precision"] <= 1 and 0 <= banana["recall"] <= 1
    assert total["AP50"] == pytest.approx(banana["AP50"])
    assert 0 < run.threshold < 1


def test_results_json_holds_the_table_the_matrix_and_the_epochs(run):
    results = json.loads((run / "results.json").read_text())
    assert results["classes"] == run.classes
    assert results["threshold"] == pytest.approx(run.threshold)
    assert results["best"]["epoch"] == results["epoch"] and results["final"]["epoch"] == 2
    matrix = results["confusion_matrix"]
    assert matrix["labels"] == ["background", "banana"]
    found, missed = matrix["matrix"][1][1], matrix["matrix"][0][1]
    assert found + missed == 6  # every val box once: found (banana) or missed (background)
    assert found / 6 == pytest.approx(run.classes[0]["recall"])


def test_the_run_folder_has_every_picture(run):
    for name in PICTURES:
        assert (run / name).read_bytes()[:8] == PNG, name


def test_tensorboard_event_files_hold_the_scalars_and_the_val_picture(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run.path), size_guidance={"images": 4})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "val/AP50", "val/AP", "val_AP/banana"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    csv_loss = [float(line.split(",")[1]) for line in (run / "metrics.csv").read_text().split()[1:]]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(csv_loss, rel=1e-5)
    (image,) = events.Images("val_predictions")
    assert image.encoded_image_string[:8] == PNG and image.width > 100


def test_without_tensorboard_installed_one_line_names_the_extra(tmp_path, monkeypatch):
    from tinyssd.engine.tensorboard import TensorBoardLog
    from tinyssd.errors import UsageError

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard fails
    with pytest.raises(UsageError) as e:
        TensorBoardLog(tmp_path)
    assert str(e.value) == (
        "tensorboard is not installed; it comes with: pip install 'tinyssd[tensorboard]'"
    )


def test_per_epoch_lines_reach_the_tinyssd_logger(tiny_data, tmp_path, caplog):
    with caplog.at_level("INFO", logger="tinyssd"):
        train(data=str(tiny_data), out=str(tmp_path / "run"), **{**ARGS, "epochs": 1})
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("epoch 1/1: loss ") for line in lines)
    assert any(line.startswith("training tiny_ssd (") for line in lines)  # the header
    assert any("P and R at score >= " in line for line in lines)  # the table
    assert any(line.startswith(f"run folder {tmp_path / 'run'}: ") for line in lines)


def _log_of(code: str, tmp_path: Path) -> list[str]:
    """stderr of ``code`` run in a fresh interpreter, written to a file (not a terminal)."""
    log_file = tmp_path / "train.log"
    with log_file.open("w") as err:
        done = subprocess.run([sys.executable, "-c", code], stderr=err, stdout=subprocess.PIPE)
    text = log_file.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text
    return text.splitlines()


def test_a_script_sees_the_epochs_without_configuring_logging(tiny_data, tmp_path):
    code = (
        "import tinyssd\n"
        f"tinyssd.train(data={str(tiny_data)!r}, out={str(tmp_path / 'run')!r}, epochs=1, "
        "batch_size=8, image_size=64, recipe='chapter', progress=False)\n"
    )
    lines = _log_of(code, tmp_path)
    assert sum(line.startswith("epoch 1/1: loss ") for line in lines) == 1, lines


def test_a_log_file_gets_short_progress_lines_each_once(tiny_data, tmp_path):
    code = (
        "import sys\n"
        "import tinyssd.engine.report as report\n"
        "from tinyssd.cli import main\n"
        "report.LOG_EVERY_S = 0  # a line every step\n"
        f"sys.exit(main(['train', '--data', {str(tiny_data)!r}, '--out', "
        f"{str(tmp_path / 'run')!r}, '--epochs', '1', '--batch-size', '8', '--image-size', '64', "
        "'--recipe', 'chapter']))\n"
    )
    lines = _log_of(code, tmp_path)
    steps = [line for line in lines if line.startswith("epoch 1/1: step ")]
    assert [s.split(",")[0] for s in steps] == ["epoch 1/1: step 1/3", "epoch 1/1: step 2/3",
                                                "epoch 1/1: step 3/3"]  # fmt: skip
    assert max(map(len, lines)) <= 300
    said = [line for line in lines if line.strip("-")]  # a table's rules repeat
    assert len(said) == len(set(said)), [x for x in said if said.count(x) > 1]
    assert sum(line.startswith("--cache auto:") for line in lines) == 1


def test_eval_writes_the_same_report_into_its_out_folder(run, tiny_data, tmp_path, capsys):
    from tinyssd.commands import evaluate_run

    evaluate_run(run, tiny_data, out=tmp_path / "eval")
    printed = capsys.readouterr().out
    assert "P and R at score >= " in printed and "banana" in printed
    for name in ("results.json", *PICTURES[1:]):
        assert (tmp_path / "eval" / name).is_file(), name
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    # the best weights at their stored threshold, as the training's own report
    for mine, trained in zip(results["classes"], run.classes, strict=True):
        assert mine["class"] == trained["class"]
        assert {k: v for k, v in mine.items() if k != "class"} == pytest.approx(
            {k: v for k, v in trained.items() if k != "class"}, rel=1e-5
        )


def test_eval_without_out_takes_a_new_folder(run, tiny_data, tmp_path, monkeypatch):
    from tinyssd.commands import evaluate_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "eval").mkdir(parents=True)
    (tmp_path / "runs" / "eval" / "results.json").write_text("mine")
    evaluate_run(run, tiny_data, quiet=True)
    assert (tmp_path / "runs" / "eval" / "results.json").read_text() == "mine"
    assert (tmp_path / "runs" / "eval2" / "results.json").is_file()


def test_the_caption_says_the_threshold_and_why_nothing_is_drawn():
    from tinyssd.engine.run_folder import val_caption

    assert "score >= 0.420" in val_caption(8, 5, 0.42, 0.9)
    assert "No prediction" not in val_caption(8, 5, 0.42, 0.9)
    empty = val_caption(8, 0, 0.42, 0.13)
    assert "No prediction reaches it" in empty and "highest score 0.130" in empty
