"""`make demo` (`tinyssd demo`): trains, draws and says where the pictures are."""

import pytest

from tinyssd.cli import main
from tinyssd.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow


def test_demo_trains_predicts_and_prints_where_the_pictures_are(tmp_path, capsys):
    data = make_synthetic(tmp_path / "synth", train=48, val=10, classes=2, seed=1)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--data", str(data)]) == 0
    printed = capsys.readouterr().out
    for name in ("curves.png", "val_predictions.png", "best.safetensors", "metrics.csv"):
        assert (out / name).stat().st_size > 0
    pictures = sorted((out / "predictions").glob("*.png"))
    assert len(pictures) == 8
    assert f"val predictions:   {out / 'val_predictions.png'}" in printed
    assert "(8 PNGs)" in printed
