"""tinyssd: the Single Shot MultiBox Detector of d2l's chapter, as a practical tool.

Shape vocabulary used in every docstring:
    B batch, A anchors per image, a anchors per feature-map cell,
    K classes including background (index 0), C = K - 1 object classes,
    M ground-truth boxes per image, S input image side.
Boxes are xyxy; normalised to [0, 1] in the chapter API, pixels at the user edges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .anchors import AnchorGenerator, multibox_prior
from .boxes import (
    batched_box_iou,
    box_center_to_corner,
    box_corner_to_center,
    box_iou,
    decode_offsets,
    encode_offsets,
)
from .errors import CheckpointError, DataError, TinySSDError, UsageError
from .losses import LossConfig, MultiBoxLoss
from .matching import match_anchors, multibox_target
from .models import SSD, SSDConfig, TinySSD, build_model
from .postprocess import multibox_detection, nms, postprocess_detections

if TYPE_CHECKING:
    from .api import Detector, load
    from .config import TrainConfig
    from .engine.train import train
    from .evaluation import evaluate

__version__ = "0.1.0"

# Imported on first use: they pull in the data readers, PIL, tqdm and matplotlib,
# which the maths above does not need (``import tinyssd.boxes`` stays light).
_LAZY = {
    "Detector": "api",
    "load": "api",
    "train": "engine.train",
    "TrainConfig": "config",
    "evaluate": "evaluation",
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
