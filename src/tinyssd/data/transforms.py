"""SSD-paper training augmentation on ``torchvision.transforms.v2`` with ``BoundingBoxes``.

Photometric distortion, zoom-out (expand onto a mean-coloured canvas), the
min-IoU random crop and horizontal flip, then drop boxes the crop left empty
and resize to the model input (``dataset.resize_image``, as for plain images).
Randomness comes from torch's global RNG, so ``torch.manual_seed`` (the
training seed) makes it reproducible.
"""

from __future__ import annotations

from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from .dataset import normalise_boxes, resize_image

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
        boxes = normalise_boxes(out["boxes"].as_subclass(Tensor).float(), oh, ow)
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
