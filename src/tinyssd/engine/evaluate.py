"""Run a model over a data set: predictions in each image's pixels, and their mAP."""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.dataset import DetectionDataset
from ..postprocess import postprocess_detections


@torch.no_grad()
def predict_batch(
    model: torch.nn.Module,
    images: Tensor,
    image_sizes: list[tuple[int, int]] | None = None,
    **postprocess_kw,
) -> list[dict[str, Tensor]]:
    """Detections for a batch ``Tensor[B, 3, S, S]`` (uint8 or 0-255 float).

    Boxes are scaled to ``image_sizes`` (height, width) per image, else left
    normalised. ``postprocess_kw`` go to ``postprocess_detections``.
    """
    was_training = model.training
    model.eval()
    anchors, cls_preds, bbox_preds = model(images)
    if was_training:
        model.train()
    return postprocess_detections(
        cls_preds, bbox_preds, anchors[0], image_sizes=image_sizes, **postprocess_kw
    )


def predict_dataset(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    indices: list[int] | None = None,
    **postprocess_kw,
) -> list[dict[str, Tensor]]:
    """Detections for the images of ``dataset`` (all, or ``indices``) in their own pixels."""
    indices = list(range(len(dataset))) if indices is None else indices
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        images = torch.stack([dataset[i][0] for i in idx]).to(device)
        images = images.contiguous(memory_format=torch.channels_last)
        sizes = [dataset.records[i].size for i in idx]
        dets = predict_batch(model, images, sizes, **postprocess_kw)
        out += [{k: v.cpu() for k, v in d.items()} for d in dets]
    return out


def evaluate_model(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> dict:
    """VOC and COCO metrics of ``model`` on ``dataset`` (``tinyssd.evaluation.evaluate``)."""
    from ..evaluation import evaluate

    predictions = predict_dataset(model, dataset, batch_size, device)
    targets = [dataset.targets_in_pixels(i) for i in range(len(dataset))]
    return evaluate(predictions, targets)
