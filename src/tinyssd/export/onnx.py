"""ONNX export: the network plus box decoding and softmax, NMS left to the consumer.

The exported graph takes ``images`` (B, 3, S, S) float32 0-255 pixels and
returns ``boxes`` (B, A, 4) normalised xyxy and ``scores`` (B, A, K) class
probabilities (background at 0) — the inputs of any NMS (e.g.
``tinyssd.postprocess_detections`` on the logits' log, or onnxruntime-side NMS).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..boxes import decode_offsets


class ExportWrapper(nn.Module):
    """SSD -> (decoded boxes, class probabilities); anchors become constants."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        anchors, cls_preds, bbox_preds = self.model(images)
        boxes = decode_offsets(anchors, bbox_preds.reshape(bbox_preds.shape[0], -1, 4))
        return boxes, torch.softmax(cls_preds, dim=-1)


def export_onnx(weights: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Write ``out`` (.onnx) for a checkpoint or run folder; class names go in its metadata."""
    from ..api import load

    det = load(weights, device="cpu")
    model = det.model.to(memory_format=torch.contiguous_format).eval()
    size = det.image_size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        ExportWrapper(model),
        (example,),
        str(out),
        input_names=["images"],
        output_names=["boxes", "scores"],
        dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    import onnx

    proto = onnx.load(str(out))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "classes", json.dumps(det.classes)
    onnx.save(proto, str(out))
    return out
