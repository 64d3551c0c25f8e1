"""Architecture configurations: one frozen dataclass, one preset function per model."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SSDConfig:
    """Everything that defines an SSD network apart from its number of classes."""

    name: str  # preset name, e.g. "tiny_ssd"
    backbone: str  # key of models.registry.BACKBONES
    channels: tuple[int, ...]  # channels of each feature map the heads read
    sizes: tuple[tuple[float, ...], ...]  # per feature map: anchor sizes (fraction of the image)
    ratios: tuple[tuple[float, ...], ...]  # per feature map: anchor aspect ratios (w / h)
    image_size: int  # default square input side, pixels
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted from 0-255 pixels
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # then divided by this
    head: str = "conv"  # class and box heads: "conv" (3x3) or "separable" (SSDlite's)
    # per map: distance between anchor centres, a fraction of the image (torchvision's
    # SSD300 steps / 300); empty: one cell of the map
    anchor_steps: tuple[float, ...] = ()
    clip_anchors: bool = False  # anchor widths and heights capped at 1 (torchvision's clip)

    def anchors_per_cell(self) -> list[int]:
        return [len(s) + len(r) - 1 for s, r in zip(self.sizes, self.ratios, strict=True)]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SSDConfig:
        fields: dict[str, Any] = {
            k: tuple(map(tuple, v)) if k in ("sizes", "ratios") else v for k, v in d.items()
        }
        for k in ("channels", "pixel_mean", "pixel_std", "anchor_steps"):
            if k in fields:
                fields[k] = tuple(fields[k])
        return SSDConfig(**fields)


def tiny_ssd() -> SSDConfig:
    """The chapter's TinySSD: 5 maps (32, 16, 8, 4, 1 at 256 px), 4 anchors per cell."""
    return SSDConfig(
        name="tiny_ssd",
        backbone="tiny",
        channels=(64, 128, 128, 128, 128),
        sizes=((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79), (0.88, 0.961)),
        ratios=((1, 2, 0.5),) * 5,
        image_size=256,
    )


def ssd300_vgg16() -> SSDConfig:
    """The paper's SSD300: VGG16 + extras, 6 maps (38..1), 8732 anchors.

    Scales follow the original Caffe model (0.1, 0.2, 0.37, ..., 1.05), each
    map taking s_k and sqrt(s_k s_k+1); ratios {1, 2, 1/2} (+ {3, 1/3} on the
    middle maps); pixels normalised with ImageNet's mean and std.
    """
    scales = (0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05)
    sizes = tuple((scales[k], round((scales[k] * scales[k + 1]) ** 0.5, 4)) for k in range(6))
    two, three = (1, 2, 0.5), (1, 2, 0.5, 3, 1 / 3)
    return SSDConfig(
        name="ssd300_vgg16",
        backbone="vgg16",
        channels=(512, 1024, 512, 256, 256, 256),
        sizes=sizes,
        ratios=(two, three, three, three, two, two),
        image_size=300,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
    )


def _fpn_sizes(finer_maps: int) -> tuple[tuple[float, ...], ...]:
    """tiny_fpn's anchor sizes: a geometric ladder from 0.05 to 0.9 of the image, two
    sizes per map, extended downwards by ``finer_maps`` maps of the same steps."""
    ladder = [round(0.05 * (0.9 / 0.05) ** (i / 9), 3) for i in range(-2 * finer_maps, 10)]
    return tuple(zip(ladder[::2], ladder[1::2], strict=True))


def _tiny_fpn_config(name: str, finer_maps: int) -> SSDConfig:
    """The tiny_fpn family at 256 px: 5 + ``finer_maps`` maps of 96 channels, 6 anchors
    per cell (ratios {1, 2, 1/2, 3, 1/3} with the first size); backbone ``name``."""
    maps = 5 + finer_maps
    return SSDConfig(
        name=name,
        backbone=name,
        channels=(96,) * maps,
        sizes=_fpn_sizes(finer_maps),
        ratios=((1, 2, 0.5, 3, 1 / 3),) * maps,
        image_size=256,
    )


def tiny_fpn() -> SSDConfig:
    """tinyssd's default: strided convs + FPN neck, 5 maps (32, 16, 8, 4, 2 at 256 px).

    Anchor sizes climb a geometric ladder from 0.05 to 0.9 of the image, two
    per map (so each map covers a factor of about 1.9); ratios {1, 2, 1/2, 3, 1/3}
    with the first size: 6 anchors per cell, 8184 anchors at 256 px.
    """
    return _tiny_fpn_config("tiny_fpn", finer_maps=0)


def tiny_fpn_p2() -> SSDConfig:
    """tiny_fpn with a sixth, stride-4 map for small objects: 64, 32, 16, 8, 4, 2 at 256 px.

    The ladder goes one map further down: sizes 0.026 and 0.036 of the image
    (about 7 and 9 px at 256 px) on a 4-px grid; the other maps are tiny_fpn's.
    6 anchors per cell, 32760 anchors at 256 px (four times tiny_fpn's).
    """
    return _tiny_fpn_config("tiny_fpn_p2", finer_maps=1)


# What torchvision's ImageNet classifiers were trained on, in 0-255 pixels.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def ssdlite320_mobilenet_v3_large() -> SSDConfig:
    """torchvision's SSDlite320: MobileNetV3-Large, depthwise extras and heads, 6 maps.

    Maps 20, 10, 5, 3, 2, 1 at 320 px; scales 0.2 to 0.95 in even steps (then
    1.0), each map taking s_k and sqrt(s_k s_k+1), ratios {1, 2, 1/2, 3, 1/3}:
    6 anchors per cell, 3234 anchors, the shapes of torchvision's
    ``DefaultBoxGenerator([[2, 3]] * 6, 0.2, 0.95)`` (which clips them to the
    image; tinyssd does not). Pixels: ImageNet's mean and std, which the
    backbone's ImageNet weights expect (torchvision's SSDlite scales to [-1, 1]).
    """
    scales = [round(0.2 + 0.15 * k, 4) for k in range(6)] + [1.0]
    return SSDConfig(
        name="ssdlite320_mobilenet_v3_large",
        backbone="mobilenet_v3_large",
        channels=(672, 960, 512, 256, 256, 128),
        sizes=tuple((scales[k], round((scales[k] * scales[k + 1]) ** 0.5, 4)) for k in range(6)),
        ratios=((1, 2, 0.5, 3, 1 / 3),) * 6,
        image_size=320,
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
        head="separable",
    )


def _ssd_resnet(name: str, backbone: str, channels: tuple[int, ...]) -> SSDConfig:
    """SSD300's anchors on a ResNet: 6 maps (38, 19, 10, 5, 3, 2 at 300 px), 8744 anchors."""
    anchors = ssd300_vgg16()
    return SSDConfig(
        name=name,
        backbone=backbone,
        channels=channels,
        sizes=anchors.sizes,
        ratios=anchors.ratios,
        image_size=300,
        pixel_mean=IMAGENET_MEAN,
        pixel_std=IMAGENET_STD,
    )


def ssd_resnet18() -> SSDConfig:
    """SSD on torchvision's ResNet-18 (layer2..4 + 3 extras), 3x3 conv heads, 300 px."""
    return _ssd_resnet("ssd_resnet18", "resnet18", (128, 256, 512, 256, 256, 128))


def ssd_resnet50() -> SSDConfig:
    """SSD on torchvision's ResNet-50 (layer2..4 + 3 extras), 3x3 conv heads, 300 px."""
    return _ssd_resnet("ssd_resnet50", "resnet50", (512, 1024, 2048, 512, 256, 256))


# The smallest --image-size each preset trains at: its layers run, and its finest feature
# map keeps at least 4 cells a side (4 of its strides). Below, the pyramid collapses to
# one-pixel maps (tiny_fpn at 8 px: five 1x1 maps) or a layer gets no pixels at all
# (tiny_ssd below 64, ssd300_vgg16's unpadded extras below 268). Measured by a dry run
# in tests/test_config.py.
MIN_IMAGE_SIZES = {
    "tiny_ssd": 64,
    "ssd300_vgg16": 268,
    "tiny_fpn": 32,
    "tiny_fpn_p2": 16,
    "ssdlite320_mobilenet_v3_large": 64,
    "ssd_resnet18": 32,
    "ssd_resnet50": 32,
}

PRESETS = {
    "tiny_ssd": tiny_ssd,
    "ssd300_vgg16": ssd300_vgg16,
    "tiny_fpn": tiny_fpn,
    "tiny_fpn_p2": tiny_fpn_p2,
    "ssdlite320_mobilenet_v3_large": ssdlite320_mobilenet_v3_large,
    "ssd_resnet18": ssd_resnet18,
    "ssd_resnet50": ssd_resnet50,
}
