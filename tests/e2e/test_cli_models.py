"""Every model preset trains from the command line at its own input size."""

import json

import pytest

from tinyssd.cli import main
from tinyssd.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow


def test_ssd300_trains_from_the_cli_at_300_pixels(tmp_path):
    data = make_synthetic(tmp_path / "synth", train=6, val=2, classes=2, seed=0, size=160)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "ssd300_vgg16", "--epochs", "1"]
    assert main([*args, "--batch-size", "3", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["ssd"]["image_size"] == 300 and config["train"]["model"] == "ssd300_vgg16"
    assert (out / "last.safetensors").is_file()
