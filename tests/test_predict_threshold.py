"""The model's own score threshold: stored at training, the default of every predictor."""

import numpy as np
import pytest
import torch
from export_helpers import CLASSES, scored_checkpoint

from tinyssd.checkpoint import read_checkpoint, save_checkpoint
from tinyssd.models import build_model
from tinyssd.options import DEFAULT_THRESHOLD
from tinyssd.predict import load


def _with_threshold(tmp_path, value):
    path = scored_checkpoint(tmp_path / "plain.safetensors", 64)
    tensors, meta = read_checkpoint(path)
    model = build_model("tiny_ssd", len(CLASSES), image_size=64)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    out = tmp_path / "stored.safetensors"
    return save_checkpoint(out, model, meta["config"], extra={"score_threshold": value})


@pytest.fixture(scope="module")
def image():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 64, 64), np.uint8))


def test_a_checkpoint_without_a_stored_threshold_predicts_at_the_default(tmp_path):
    det = load(scored_checkpoint(tmp_path / "c.safetensors", 64), precision="fp32")
    assert det.score_threshold == DEFAULT_THRESHOLD


@pytest.mark.parametrize("stored", [0.0, -1, 2.5, "x", None])
def test_a_stored_threshold_that_is_not_in_0_1_is_not_used(tmp_path, stored):
    assert load(_with_threshold(tmp_path, stored), precision="fp32").score_threshold == 0.5


def test_the_stored_threshold_is_the_default_of_torch_and_onnx_predictors(tmp_path, image):
    from tinyssd.export.onnx import export_onnx

    det = load(_with_threshold(tmp_path, 0.2), precision="fp32")
    assert det.score_threshold == 0.2
    graph = load(export_onnx(tmp_path / "stored.safetensors", tmp_path / "m.onnx"))
    assert graph.score_threshold == pytest.approx(0.2)
    for predictor in (det, graph):
        default = predictor.predict(image)[0]
        assert len(default["scores"]) and float(default["scores"].min()) >= 0.2
        explicit = predictor.predict(image, threshold=0.2)[0]
        torch.testing.assert_close(default["scores"], explicit["scores"])
        # an explicit threshold wins
        assert len(predictor.predict(image, threshold=0.9)[0]["scores"]) < len(default["scores"])
