import json

import numpy as np
import pytest
import torch

from tinyssd.engine.checkpoint import save_checkpoint
from tinyssd.export.onnx import ExportWrapper, export_onnx
from tinyssd.models import TinySSD

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TinySSD(2).eval()
    config = {
        "model": "tiny_ssd",
        "num_classes": 2,
        "classes": ["cat", "dog"],
        "ssd": model.config.to_dict(),
    }
    return model, save_checkpoint(tmp_path / "best.safetensors", model, config)


def test_onnx_export_matches_pytorch_and_keeps_class_names(tmp_path):
    model, ckpt = _checkpoint(tmp_path)
    path = export_onnx(ckpt, tmp_path / "model.onnx")
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog"]

    images = torch.rand(2, 3, 256, 256) * 255  # batch 2: the batch axis is dynamic
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"images": images.numpy()})
    with torch.no_grad():
        want_boxes, want_scores = ExportWrapper(model)(images)
    assert boxes.shape == (2, 5444, 4) and scores.shape == (2, 5444, 3)
    np.testing.assert_allclose(boxes, want_boxes.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, want_scores.numpy(), rtol=1e-4, atol=1e-5)
