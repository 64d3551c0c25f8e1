"""The SSD network: a backbone's feature maps, a class and a box head on each, anchors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
from torch import Tensor, nn

from ..anchors import AnchorGenerator
from .config import PRESETS, SSDConfig, tiny_ssd
from .mobilenet import MobileNetV3Backbone, ReducedMobileNetV3Backbone, SeparableConv2d
from .resnet import ResNet18Backbone, ResNet50Backbone
from .ssd300 import VGG16Backbone
from .tiny import TinyBackbone
from .tiny_fpn import TinyFPNBackbone

BACKBONES: dict[str, Callable[[], nn.Module]] = {
    "tiny": TinyBackbone,
    "vgg16": VGG16Backbone,
    "tiny_fpn": TinyFPNBackbone,
    "tiny_fpn_p2": partial(TinyFPNBackbone, p2=True),
    "mobilenet_v3_large": MobileNetV3Backbone,
    "mobilenet_v3_large_reduced": ReducedMobileNetV3Backbone,  # COCO SSDlite's
    "resnet18": ResNet18Backbone,
    "resnet50": ResNet50Backbone,
}


def head_layer(num_inputs: int, num_outputs: int, head: str = "conv") -> nn.Module:
    """A map's predictor: 3x3 conv, or (``"separable"``) SSDlite's depthwise 3x3 + 1x1."""
    if head == "separable":
        return SeparableConv2d(num_inputs, num_outputs)
    return nn.Conv2d(num_inputs, num_outputs, kernel_size=3, padding=1)


def cls_predictor(
    num_inputs: int, num_anchors: int, num_classes: int, head: str = "conv"
) -> nn.Module:
    """3x3 conv (or ``head``): a * (C + 1) class scores per cell."""
    return head_layer(num_inputs, num_anchors * (num_classes + 1), head)


def bbox_predictor(num_inputs: int, num_anchors: int, head: str = "conv") -> nn.Module:
    """3x3 conv (or ``head``): a * 4 offsets per cell."""
    return head_layer(num_inputs, num_anchors * 4, head)


def flatten_pred(pred: Tensor) -> Tensor:
    """``Tensor[B, a*X, h, w]`` -> ``Tensor[B, h*w*a*X]`` (cell-major, as the anchors)."""
    return torch.flatten(pred.permute(0, 2, 3, 1), start_dim=1)


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    ``forward`` takes images ``Tensor[B, 3, S, S]``, uint8 or float, in 0-255
    pixel values (the model normalises them) and returns the raw head outputs:
    ``anchors`` Tensor[1, A, 4] (normalised xyxy), ``cls_logits``
    Tensor[B, A, C+1] (logits, background at 0) and ``box_deltas``
    Tensor[B, 4A] (offsets). Losses and decoding live elsewhere.
    """

    pixel_mean: Tensor  # (1, 3, 1, 1) buffers, registered in __init__
    pixel_std: Tensor

    def __init__(self, num_classes: int, config: SSDConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.config = config
        self.backbone = BACKBONES[config.backbone]()
        per_cell = config.anchors_per_cell()
        self.cls_heads = nn.ModuleList(
            [
                cls_predictor(c, a, num_classes, config.head)
                for c, a in zip(config.channels, per_cell)
            ]
        )
        self.bbox_heads = nn.ModuleList(
            [bbox_predictor(c, a, config.head) for c, a in zip(config.channels, per_cell)]
        )
        self.anchor_generator = AnchorGenerator(
            config.sizes, config.ratios, config.anchor_steps, config.clip_anchors
        )
        self.register_buffer("pixel_mean", torch.tensor(config.pixel_mean).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(config.pixel_std).view(1, 3, 1, 1), False)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 or float 0-255 pixels -> the network's input scale (float32)."""
        x = images.float()
        if self.config.pixel_mean != (0.0, 0.0, 0.0) or self.config.pixel_std != (1.0, 1.0, 1.0):
            x = (x - self.pixel_mean) / self.pixel_std
        return x

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feats = self.backbone(self.normalise(images))
        anchors = self.anchor_generator([f.shape[-2:] for f in feats], images.device)
        cls_logits = torch.cat([flatten_pred(h(f)) for h, f in zip(self.cls_heads, feats)], dim=1)
        box_deltas = torch.cat([flatten_pred(h(f)) for h, f in zip(self.bbox_heads, feats)], dim=1)
        cls_logits = cls_logits.reshape(cls_logits.shape[0], -1, self.num_classes + 1)  # (B, A, K)
        return anchors[None], cls_logits, box_deltas


def build_model(name: str, num_classes: int, **overrides) -> SSD:
    """A model from a preset name (``tiny_ssd``, ``ssd300_vgg16``), fields overridable."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r} (choose from {', '.join(PRESETS)})")
    return SSD(num_classes, replace(PRESETS[name](), **overrides))


def TinySSD(num_classes: int) -> SSD:  # noqa: N802 - the chapter's name
    """The chapter's TinySSD, layer for layer."""
    return SSD(num_classes, tiny_ssd())
