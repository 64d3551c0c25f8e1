"""torchvision's COCO-trained SSD300 and SSDlite320 as tinyssd networks.

    model, classes = load_coco_detector("ssdlite320_mobilenet_v3_large")  # 90 COCO classes
    tinyssd.load("coco:ssdlite320_mobilenet_v3_large")                    # the same, as a Detector
    tinyssd train --data DIR --model ssdlite320_mobilenet_v3_large --pretrained coco

:func:`coco_config` is torchvision's geometry for each model: its anchor
scales and steps (clipped as ``DefaultBoxGenerator(clip=True)`` clips them),
its pixel scaling (SSD300: Caffe's mean, no std; SSDlite: [-1, 1]) and, for
SSDlite, the half-width MobileNet tail it was trained with. The anchors of a
cell come in torchvision's order and the heads' channels in its layout, so
:func:`convert_state_dict` only renames: every one of torchvision's tensors
gets a place and every tensor of the network gets one of them, or the load
fails. Labels keep torchvision's 91-slot indexing: label l is COCO category
id l (1 = person, ..., 90 = toothbrush), the unused ids named ``N/A``.
``COCO_POSTPROCESS`` holds torchvision's post-processing settings.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import cast

from torch import Tensor
from torchvision.models import WeightsEnum
from torchvision.models.detection import (
    SSD300_VGG16_Weights,
    SSDLite320_MobileNet_V3_Large_Weights,
)

from ..errors import CheckpointError, UsageError
from ..options import PostprocessConfig
from .config import SSDConfig, ssd300_vgg16, ssdlite320_mobilenet_v3_large
from .mobilenet import SSDLITE_REDUCED_CHANNELS, MobileNetV3Backbone
from .ssd import SSD
from .weights import read_weights, weights_file

__all__ = [
    "COCO_POSTPROCESS",
    "COCO_WEIGHTS",
    "coco_classes",
    "coco_config",
    "convert_state_dict",
    "load_coco_detector",
    "load_coco_weights",
]

COCO_WEIGHTS: dict[str, WeightsEnum] = {
    "ssd300_vgg16": SSD300_VGG16_Weights.COCO_V1,
    "ssdlite320_mobilenet_v3_large": SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
}
NUM_COCO_CLASSES = 90  # torchvision's 91 outputs less the background: ids 1..90

# torchvision's SSD(score_thresh, nms_thresh, topk_candidates, detections_per_img) per model
# (ssd.py's defaults; ssdlite.py's own). torchvision keeps the top-k per class before NMS,
# tinyssd per image: the detections are the same down to the top-k-th candidate's score.
# torchvision has no box voting.
COCO_POSTPROCESS = {
    "ssd300_vgg16": PostprocessConfig(
        score_threshold=0.01,
        nms_threshold=0.45,
        topk_candidates=400,
        max_detections=200,
        box_vote=0.0,
    ),
    "ssdlite320_mobilenet_v3_large": PostprocessConfig(
        score_threshold=0.001,
        nms_threshold=0.55,
        topk_candidates=300,
        max_detections=300,
        box_vote=0.0,
    ),
}


def _scale_pairs(scales: list[float]) -> tuple[tuple[float, float], ...]:
    """torchvision's two square anchors per map: s_k and sqrt(s_k s_k+1), unrounded."""
    return tuple((scales[k], math.sqrt(scales[k] * scales[k + 1])) for k in range(len(scales) - 1))


def coco_config(name: str) -> SSDConfig:
    """The preset ``name`` with torchvision's COCO geometry (anchors, pixel scaling, tail)."""
    if name == "ssd300_vgg16":
        return replace(
            ssd300_vgg16(),
            sizes=_scale_pairs([0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]),
            anchor_steps=tuple(step / 300 for step in (8, 16, 32, 64, 100, 300)),
            clip_anchors=True,
            # torchvision: (x / 255 - mean) / (1 / 255), i.e. 0-255 pixels less Caffe's mean
            pixel_mean=(0.48235 * 255, 0.45882 * 255, 0.40784 * 255),
            pixel_std=(1.0, 1.0, 1.0),
        )
    if name == "ssdlite320_mobilenet_v3_large":
        scales = [0.2 + (0.95 - 0.2) * k / 5.0 for k in range(6)] + [1.0]  # min 0.2, max 0.95
        return replace(
            ssdlite320_mobilenet_v3_large(),
            backbone="mobilenet_v3_large_reduced",
            channels=SSDLITE_REDUCED_CHANNELS,
            sizes=_scale_pairs(scales),
            clip_anchors=True,
            pixel_mean=(127.5, 127.5, 127.5),  # [-1, 1]
            pixel_std=(127.5, 127.5, 127.5),
        )
    raise UsageError(f"{name}: no COCO weights (models with them: {', '.join(COCO_WEIGHTS)})")


def coco_classes(name: str) -> list[str]:
    """The class names of label 1..90: torchvision's ``meta["categories"]`` less the background."""
    return list(COCO_WEIGHTS[name].meta["categories"][1:])


# ---------------------------------------------------------------------------- names


_HEADS = [
    (r"head\.classification_head\.module_list\.(\d+)\.(.+)", r"cls_heads.\1.\2"),
    (r"head\.regression_head\.module_list\.(\d+)\.(.+)", r"bbox_heads.\1.\2"),
]


def _vgg_name(name: str) -> str | None:
    """torchvision's SSDFeatureExtractorVGG -> VGG16Backbone: conv1-4 in ``features``, the
    scale of the L2 norm, conv5 + fc6/fc7 as ``extra.0`` (7 layers, then fc), 4 extras."""
    rules = [
        (r"backbone\.features\.(.+)", r"backbone.conv4.\1"),
        (r"backbone\.scale_weight", r"backbone.l2norm.weight"),
        (r"backbone\.extra\.0\.7\.(.+)", r"backbone.fc7.\1"),
        (r"backbone\.extra\.0\.([0-6])\.(.+)", r"backbone.conv5.\1.\2"),
    ]
    for pattern, target in rules:
        if m := re.fullmatch(pattern, name):
            return m.expand(target)
    if m := re.fullmatch(r"backbone\.extra\.(\d+)\.(.+)", name):
        return f"backbone.extras.{int(m[1]) - 1}.{m[2]}"
    return None


def _mobilenet_name(name: str, c4: int) -> str | None:
    """torchvision's SSDLiteFeatureExtractorMobileNet -> MobileNetV3Backbone: ``features.0``
    holds blocks 0..c4-1 then C4's expansion, ``features.1`` C4's rest then the later blocks."""
    if m := re.fullmatch(r"backbone\.features\.0\.(\d+)\.(.+)", name):
        i = int(m[1])
        return f"backbone.features.{i if i < c4 else f'{c4}.block.0'}.{m[2]}"
    if m := re.fullmatch(r"backbone\.features\.1\.0\.(\d+)\.(.+)", name):
        return f"backbone.features.{c4}.block.{m[1]}.{m[2]}"  # a slice keeps its indices
    if m := re.fullmatch(r"backbone\.features\.1\.(\d+)\.(.+)", name):
        return f"backbone.features.{c4 + int(m[1])}.{m[2]}"
    if m := re.fullmatch(r"backbone\.extra\.(.+)", name):
        return f"backbone.extras.{m[1]}"
    return None


def convert_state_dict(state: dict[str, Tensor], model: SSD) -> dict[str, Tensor]:
    """torchvision's COCO SSD state dict under ``model``'s names.

    Every tensor of ``state`` must have a place in ``model`` and every tensor of
    ``model`` must come from ``state`` (shapes are the caller's to compare).
    ValueError, one line, naming the first tensor that does not.
    """
    if model.config.backbone == "vgg16":

        def backbone_name(name: str) -> str | None:
            return _vgg_name(name)
    elif model.config.backbone == "mobilenet_v3_large_reduced":
        c4 = cast(MobileNetV3Backbone, model.backbone).c4

        def backbone_name(name: str) -> str | None:
            return _mobilenet_name(name, c4)
    else:
        raise ValueError(f"no COCO weights for backbone {model.config.backbone}")
    own = model.state_dict()
    converted: dict[str, Tensor] = {}
    for name, value in state.items():
        target = backbone_name(name)
        for pattern, head_target in _HEADS:
            if m := re.fullmatch(pattern, name):
                target = m.expand(head_target)
        if target is None or target not in own:
            raise ValueError(f"{name} has no place in tinyssd's {model.config.name}")
        if target in converted:
            raise ValueError(f"{name} and another tensor both map to {target}")
        converted[target] = value
    missing = [k for k in own if k not in converted]
    if missing:
        raise ValueError(f"{len(missing)} tensors of tinyssd's model missing (first: {missing[0]})")
    return converted


# ---------------------------------------------------------------------------- loading


def load_coco_weights(model: SSD, option: str, progress: bool = True) -> tuple[list[str], Path]:
    """Put torchvision's COCO weights into ``model`` (built from :func:`coco_config`).

    Class heads of another class count than 90 keep their initialisation; every
    other tensor must fit. ``option`` starts the error messages. Returns the
    names left as they were and the weights file; CheckpointError, one line,
    when the file is missing and cannot be fetched, unreadable, or not these weights.
    """
    name = model.config.name
    weights = COCO_WEIGHTS[name]
    state = read_weights(weights, option, progress)
    file = weights_file(weights)
    try:
        converted = convert_state_dict(state, model)
    except ValueError as e:
        raise CheckpointError(f"{file}: not torchvision's {weights} ({e})") from None
    own = model.state_dict()
    kept = []
    for key, value in converted.items():
        if value.shape == own[key].shape:
            continue
        if key.startswith("cls_heads.") and model.num_classes != NUM_COCO_CLASSES:
            kept.append(key)  # another class count: this head starts afresh
            continue
        raise CheckpointError(
            f"{file}: not torchvision's {weights} ({key} is {tuple(value.shape)}, "
            f"tinyssd's {name} has {tuple(own[key].shape)})"
        )
    model.load_state_dict({**converted, **{k: own[k] for k in kept}})
    return kept, file


def load_coco_detector(name: str, progress: bool = True) -> tuple[SSD, list[str]]:
    """torchvision's COCO detector ``name`` as a tinyssd SSD (eval mode) and its 90 class names.

    UsageError for a name without COCO weights; CheckpointError (one line) for the file.
    """
    if name not in COCO_WEIGHTS:
        choices = ", ".join(f"coco:{n}" for n in COCO_WEIGHTS)
        raise UsageError(f"coco:{name}: no such COCO detector (choose from {choices})")
    model = SSD(NUM_COCO_CLASSES, coco_config(name))
    load_coco_weights(model, f"coco:{name}", progress)
    return model.eval(), coco_classes(name)
