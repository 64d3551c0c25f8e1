"""tinyssd: the Single Shot MultiBox Detector of d2l's chapter, as a practical tool.

Shape vocabulary used in every docstring:
    B batch, A anchors per image, a anchors per feature-map cell,
    K classes including background (index 0), C = K - 1 object classes,
    M ground-truth boxes per image, S input image side.
Boxes are xyxy; normalised to [0, 1] in the chapter API, pixels at the user edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CheckpointError, DataError, TinySSDError, UsageError

if TYPE_CHECKING:
    from .anchors import AnchorGenerator, multibox_prior
    from .boxes import (
        batched_box_iou,
        box_center_to_corner,
        box_corner_to_center,
        box_iou,
        decode_offsets,
        encode_offsets,
    )
    from .config import TrainConfig
    from .engine.train import train
    from .evaluation import evaluate
    from .losses import LossConfig, MultiBoxLoss
    from .matching import match_anchors, multibox_target
    from .models import SSD, SSDConfig, TinySSD, build_model
    from .postprocess import multibox_detection, nms, postprocess_detections
    from .predict import Detector, load

__version__ = "0.1.0"

# Every name but the errors is imported on first use, so that ``import tinyssd`` and
# ``tinyssd --help`` load no torch: name -> the module that defines it.
_LAZY = {
    "AnchorGenerator": "anchors",
    "multibox_prior": "anchors",
    "Detector": "predict",
    "load": "predict",
    **dict.fromkeys(
        (
            "batched_box_iou",
            "box_center_to_corner",
            "box_corner_to_center",
            "box_iou",
            "decode_offsets",
            "encode_offsets",
        ),
        "boxes",
    ),
    "TrainConfig": "config",
    "train": "engine.train",
    "evaluate": "evaluation",
    "LossConfig": "losses",
    "MultiBoxLoss": "losses",
    "match_anchors": "matching",
    "multibox_target": "matching",
    **dict.fromkeys(("SSD", "SSDConfig", "TinySSD", "build_model"), "models"),
    **dict.fromkeys(("multibox_detection", "nms", "postprocess_detections"), "postprocess"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SSD",
    "AnchorGenerator",
    "CheckpointError",
    "DataError",
    "Detector",
    "LossConfig",
    "MultiBoxLoss",
    "SSDConfig",
    "TinySSD",
    "TinySSDError",
    "TrainConfig",
    "UsageError",
    "batched_box_iou",
    "box_center_to_corner",
    "box_corner_to_center",
    "box_iou",
    "build_model",
    "decode_offsets",
    "encode_offsets",
    "evaluate",
    "load",
    "match_anchors",
    "multibox_detection",
    "multibox_prior",
    "multibox_target",
    "nms",
    "postprocess_detections",
    "train",
]
