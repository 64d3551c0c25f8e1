"""The whole tool from the command line on a small synthetic set: train, predict, eval."""

import csv
import json

import pytest

from tinyssd.cli import main
from tinyssd.data import DetectionDataset, load_split
from tinyssd.inference import evaluate_dataset
from tinyssd.models import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tinyssd.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synth")
    make_synthetic(root, train=320, val=48, classes=2, seed=3, size=128)
    return root


@pytest.fixture(scope="module")
def run(synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "e2e"
    code = main(
        [
            "train",
            "--data",
            str(synth),
            "--epochs",
            "12",
            "--batch-size",
            "16",
            "--image-size",
            "128",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_training_lifts_ap50_well_above_an_untrained_model(synth, run):
    val = DetectionDataset(load_split(synth, "val"), 128)
    untrained = evaluate_dataset(build_model("tiny_ssd", 2, image_size=128).eval(), val)["AP50"]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    best = max(float(r["val_AP50"]) for r in rows)
    assert best > max(0.3, 5 * untrained), (best, untrained)
    for name in ("config.json", "curves.png", "val_predictions.png", "best.safetensors"):
        assert (run / name).stat().st_size > 0


def test_predict_writes_pictures_and_json_lines(synth, run, tmp_path, capsys):
    images = sorted((synth / "bananas_val" / "images").iterdir())[:3]
    code = main(
        [
            "predict",
            *map(str, images),
            "--weights",
            str(run),
            "--threshold",
            "0.3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert [d["image"] for d in lines] == list(map(str, images))
    classes = json.loads((run / "config.json").read_text())["classes"]
    assert sum(len(d["boxes"]) for d in lines) > 0
    for d in lines:
        assert set(d["names"]) <= set(classes) and all(s >= 0.3 for s in d["scores"])
        for x1, y1, x2, y2 in d["boxes"]:
            assert -1 <= x1 < x2 <= d["width"] + 1 and -1 <= y1 < y2 <= d["height"] + 1
        assert (tmp_path / (d["image"].rsplit("/", 1)[1].rsplit(".", 1)[0] + ".png")).is_file()


def test_eval_prints_table_and_writes_pr_curve_and_json(synth, run, tmp_path, capsys):
    code = main(
        [
            "eval",
            "--weights",
            str(run),
            "--data",
            str(synth),
            "--json",
            str(tmp_path / "m.json"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in (
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
        "AR1",
        "AR10",
        "AR100",
        "ARs",
        "ARm",
        "ARl",
        "VOC07_mAP",
        "VOC_mAP",
        "per_class",
    ):
        assert key in metrics
    assert 0.3 < metrics["AP50"] <= 1
    for name in json.loads((run / "config.json").read_text())["classes"]:
        assert name in table
    assert (tmp_path / "PR_curve.png").read_bytes()[:4] == b"\x89PNG"
