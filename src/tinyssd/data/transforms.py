"""SSD-paper training augmentation on ``torchvision.transforms.v2`` with ``BoundingBoxes``.

Photometric distortion, zoom-out (expand onto a mean-coloured canvas), the
min-IoU random crop and horizontal flip, then drop boxes the crop left empty
and resize to the model input (``images.resize_image``, as for plain images).
Randomness comes from torch's global RNG, so ``torch.manual_seed`` (the
training seed) makes it reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..boxes import normalise_boxes
from ..images import resize_image
from .dataset import hflip

PARTS = ("photometric", "expand", "crop", "flip")
# Canvas colour of the zoom-out: ImageNet's mean pixel, as in the SSD paper's code.
MEAN_PIXEL = (124, 116, 104)


def parse_augment(spec: str) -> dict[str, bool]:
    """``"none"``, ``"ssd"`` (all four parts) or a comma list of parts -> the switches."""
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return dict.fromkeys(PARTS, False)
    if spec in ("ssd", "all"):
        return dict.fromkeys(PARTS, True)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown:
        raise ValueError(
            f"--augment {spec!r}: unknown part(s) {unknown}; use none, ssd or a comma list "
            f"of {', '.join(PARTS)}"
        )
    return {p: p in names for p in PARTS}


class SSDAugment:
    """The Transform of ``DetectionDataset``: (image uint8 [3, H, W], boxes [M, 4] pixels,
    labels [M]) -> (image uint8 [3, S, S], boxes [M', 4] normalised, labels [M'])."""

    def __init__(
        self,
        image_size: int,
        photometric: bool = True,
        expand: bool = True,
        crop: bool = True,
        flip: bool = True,
    ) -> None:
        self.image_size = image_size
        before = [v2.RandomPhotometricDistort(p=0.5)] if photometric else []
        if expand:
            fill = {tv_tensors.Image: MEAN_PIXEL, "others": 0}
            before.append(v2.RandomZoomOut(fill=fill, side_range=(1.0, 4.0), p=0.5))
        after = [v2.RandomHorizontalFlip(p=0.5)] if flip else []
        after.append(v2.SanitizeBoundingBoxes(min_size=1.0))
        # RandomIoUCrop needs at least one box: images without boxes skip it
        self.with_crop = v2.Compose(
            [*before, v2.RandomIoUCrop(), *after] if crop else [*before, *after]
        )
        self.without_crop = v2.Compose([*before, *after])

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, w = image.shape[-2:]
        sample = {
            "image": tv_tensors.Image(image),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
            "labels": labels,
        }
        out = (self.with_crop if len(boxes) else self.without_crop)(sample)
        image = out["image"].as_subclass(Tensor)
        oh, ow = image.shape[-2:]
        boxes = normalise_boxes(out["boxes"].as_subclass(Tensor).float(), (oh, ow))
        # the same resize as un-augmented images get
        return resize_image(image, self.image_size), boxes, out["labels"]


def train_transform(
    image_size: int,
    photometric: bool = True,
    expand: bool = True,
    crop: bool = True,
    flip: bool = True,
) -> SSDAugment:
    """The training augmentation with each part switchable (all on: the SSD paper's)."""
    return SSDAugment(image_size, photometric, expand, crop, flip)


def zoom_out_limit(
    boxes: Tensor, height: int, width: int, min_anchor: float, min_iou: float = 0.5
) -> float:
    """The largest zoom-out after which every box can still be matched by an anchor.

    Zooming out by ``z`` (the image pasted on a canvas ``z`` times its sides)
    divides every normalised box side by ``z``. A box of normalised size
    ``b = sqrt(w h)`` smaller than the smallest anchor ``a`` overlaps a
    concentric anchor by at most ``b^2 / a^2``; keeping that >= ``min_iou``
    needs ``b / z >= a sqrt(min_iou)``.

    Args:
        boxes (Tensor[M, 4]): xyxy pixels of an ``height x width`` image.
        min_anchor: the model's smallest anchor size, a fraction of the image side.
    Returns:
        ``z_max >= 1`` (1.0: no zoom-out possible; ``inf`` for no boxes).
    """
    if len(boxes) == 0:
        return math.inf
    w = (boxes[:, 2] - boxes[:, 0]) / width
    h = (boxes[:, 3] - boxes[:, 1]) / height
    smallest = float((w * h).clamp(min=0).sqrt().min())
    return max(1.0, smallest / (min_anchor * math.sqrt(min_iou)))


def bounded_zoom_out(
    image: Tensor, boxes: Tensor, max_zoom: float, min_anchor: float, min_iou: float = 0.5
) -> tuple[Tensor, Tensor]:
    """Paste ``image`` at a random place of a mean-coloured canvas ``z`` times its
    size, ``z`` uniform in [1, min(max_zoom, zoom_out_limit)].

    Args:
        image (Tensor[3, H, W] uint8), boxes (Tensor[M, 4] xyxy pixels).
    Returns:
        (Tensor[3, zH, zW] uint8, Tensor[M, 4] xyxy pixels of the canvas).
    """
    h, w = image.shape[-2:]
    top = min(max_zoom, zoom_out_limit(boxes, h, w, min_anchor, min_iou))
    z = 1.0 + float(torch.rand(())) * (top - 1.0)
    ch, cw = int(h * z), int(w * z)
    if (ch, cw) == (h, w):
        return image, boxes
    y0 = int(torch.randint(0, ch - h + 1, ()))
    x0 = int(torch.randint(0, cw - w + 1, ()))
    canvas = torch.tensor(MEAN_PIXEL, dtype=image.dtype).view(3, 1, 1).repeat(1, ch, cw)
    canvas[:, y0 : y0 + h, x0 : x0 + w] = image
    return canvas, boxes + boxes.new_tensor([x0, y0, x0, y0])


def centre_crop_boxes(
    image: Tensor, boxes: Tensor, labels: Tensor, min_scale: float = 0.5, tries: int = 10
) -> tuple[Tensor, Tensor, Tensor]:
    """A random crop (each side ``min_scale``..1 of the image's) that keeps the
    boxes whose centres fall inside it, clipped; at least one box, or no crop.

    Unlike the SSD paper's min-IoU crop, this succeeds for small objects (a
    crop overlaps a small box by a small IoU even when it holds it whole).

    Args:
        image (Tensor[3, H, W]), boxes (Tensor[M, 4] xyxy pixels), labels (Tensor[M]).
    Returns:
        (image crop, boxes in its pixels, their labels).
    """
    h, w = image.shape[-2:]
    if len(boxes) == 0:
        return image, boxes, labels
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(tries):
        sh, sw = (min_scale + (1 - min_scale) * torch.rand(2)).tolist()
        ch, cw = max(int(h * sh), 1), max(int(w * sw), 1)
        y0 = int(torch.randint(0, h - ch + 1, ()))
        x0 = int(torch.randint(0, w - cw + 1, ()))
        inside = (
            (centres[:, 0] > x0)
            & (centres[:, 0] < x0 + cw)
            & (centres[:, 1] > y0)
            & (centres[:, 1] < y0 + ch)
        )
        if inside.any():
            shift = boxes.new_tensor([x0, y0, x0, y0])
            kept = boxes[inside] - shift
            limit = boxes.new_tensor([cw, ch, cw, ch])
            kept = torch.minimum(kept.clamp(min=0), limit)
            return image[:, y0 : y0 + ch, x0 : x0 + cw], kept, labels[inside]
    return image, boxes, labels


class AnchorBoundedAugment:
    """Augmentation that never leaves the anchors behind (a ``DetectionDataset`` Transform).

    Photometric distortion, zoom-out bounded by ``zoom_out_limit`` for the
    model's smallest anchor, a crop that keeps box centres (``centre_crop_boxes``),
    horizontal flip; then the plain resize to ``image_size``.
    """

    def __init__(
        self,
        image_size: int,
        min_anchor: float,
        max_zoom: float = 2.0,
        photometric: bool = True,
        expand: bool = True,
        crop: bool = True,
        flip: bool = True,
        p: float = 0.5,
    ) -> None:
        self.image_size = image_size
        self.min_anchor = min_anchor
        self.max_zoom = max_zoom
        self.photometric = v2.RandomPhotometricDistort(p=p) if photometric else None
        self.expand, self.crop, self.flip, self.p = expand, crop, flip, p

    def __call__(
        self, image: Tensor, boxes: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        boxes = boxes.float()
        if self.photometric is not None:
            image = self.photometric(tv_tensors.Image(image)).as_subclass(Tensor)
        if self.expand and float(torch.rand(())) < self.p:
            image, boxes = bounded_zoom_out(image, boxes, self.max_zoom, self.min_anchor)
        if self.crop and float(torch.rand(())) < self.p:
            image, boxes, labels = centre_crop_boxes(image, boxes, labels)
        h, w = image.shape[-2:]
        if self.flip and float(torch.rand(())) < 0.5:
            image, boxes = hflip(image, boxes, w)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        boxes, labels = normalise_boxes(boxes[keep], (h, w)), labels[keep]
        return resize_image(image, self.image_size), boxes, labels
