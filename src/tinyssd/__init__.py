"""tinyssd: the Single Shot MultiBox Detector of d2l's chapter, as a practical tool.

Shape vocabulary used in every docstring:
    B batch, A anchors per image, a anchors per feature-map cell,
    K classes including background (index 0), C = K - 1 object classes,
    M ground-truth boxes per image, S input image side.
Boxes are xyxy; normalised to [0, 1] in the chapter API, pixels at the user edges.
"""

from .anchors import AnchorGenerator, multibox_prior
from .api import Detector, load
from .boxes import (
    batched_box_iou,
    box_center_to_corner,
    box_corner_to_center,
    box_iou,
    decode_offsets,
    encode_offsets,
)
from .engine.train import train
from .evaluation import evaluate
from .losses import LossConfig, MultiBoxLoss
from .matching import match_anchors, multibox_target
from .models import SSD, SSDConfig, TinySSD, build_model
from .postprocess import multibox_detection, nms, postprocess_detections

__version__ = "0.1.0"

__all__ = [
    "SSD",
    "AnchorGenerator",
    "Detector",
    "LossConfig",
    "MultiBoxLoss",
    "SSDConfig",
    "TinySSD",
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
