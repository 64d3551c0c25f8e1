"""A torch Dataset over records: decoded once, held as uint8, batched as chapter rows."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import DataError, Record, Report, Split, clip_to_image, read_image

log = logging.getLogger(__name__)

# (image uint8 [3, H, W], boxes [M, 4] xyxy pixels, labels [M]) ->
# (image uint8 [3, S, S], boxes [M', 4] xyxy normalised to [0, 1], labels [M'])
Transform = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def resize_image(image: Tensor, size: int) -> Tensor:
    """Resize ``Tensor[3, H, W]`` uint8 to ``Tensor[3, size, size]`` uint8 (bilinear)."""
    if image.shape[-2:] == (size, size):
        return image
    out = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)


def normalise_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Pixels -> [0, 1]: ``Tensor[M, 4]`` xyxy divided by (W, H, W, H)."""
    return boxes / boxes.new_tensor([width, height, width, height])


class DetectionDataset(torch.utils.data.Dataset):
    """Images with their targets, decoded once and cached as uint8.

    ``dataset[i]`` is ``(image, target)``: image ``Tensor[3, S, S]`` uint8 and
    target ``{"boxes": Tensor[M, 4] normalised xyxy, "labels": Tensor[M] 1..C}``.
    Unreadable images are reported and left out; boxes are clipped to the
    image (reported). ``targets_in_pixels(i)`` gives what evaluation needs.

    Without a ``transform`` the images are resized to S once, at load time.
    """

    def __init__(
        self,
        split: Split,
        image_size: int = 256,
        transform: Transform | None = None,
        report: Report | None = None,
    ) -> None:
        self.classes = split.classes
        self.image_size = image_size
        self.transform = transform
        self.report = report if report is not None else Report()
        self.records: list[Record] = []
        self.images: list[Tensor] = []
        for rec in split.records:
            try:
                image = read_image(rec.image)
            except DataError as e:
                self.report.add_unreadable(rec.image, e)
                continue
            self.records.append(clip_to_image(rec, tuple(image.shape[-2:]), self.report))
            self.images.append(image if transform is not None else resize_image(image, image_size))
        skipped = len(split.records) - len(self.records)
        if skipped:
            log.warning("%s: skipped %d unreadable image(s)", split.root, skipped)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec, image = self.records[i], self.images[i]
        h, w = rec.size
        if self.transform is None:
            return image, {"boxes": normalise_boxes(rec.boxes, h, w), "labels": rec.labels}
        image, boxes, labels = self.transform(image, rec.boxes, rec.labels)
        return image, {"boxes": boxes, "labels": labels}

    def targets_in_pixels(self, i: int) -> dict[str, Tensor]:
        """Ground truth of image i in its original pixels (the evaluation's target dict)."""
        rec = self.records[i]
        return {
            "boxes": rec.boxes,
            "labels": rec.labels,
            "difficult": rec.difficult,
            "iscrowd": rec.iscrowd,
        }


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Tensor]:
    """Stack images and pad targets into the chapter's label rows.

    Returns:
        images (Tensor[B, 3, S, S] uint8),
        labels (Tensor[B, M, 5] float32): rows (class 0..C-1, x1, y1, x2, y2)
        normalised, class -1 for padding, M = max(1, most boxes in an image).
    """
    images = torch.stack([img for img, _ in batch])
    m = max(1, max(len(t["labels"]) for _, t in batch))
    labels = torch.full((len(batch), m, 5), -1.0)
    for b, (_, t) in enumerate(batch):
        n = len(t["labels"])
        labels[b, :n, 0] = t["labels"].float() - 1
        labels[b, :n, 1:] = t["boxes"]
    return images, labels
