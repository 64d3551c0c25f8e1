"""What every predictor is: the ``Predictor`` interface, and the input batch it builds.

A predictor takes any images (``tinyssd.images.ImageLike``: paths, PIL images,
uint8 tensors and arrays, lists of them, 4-D batches) and returns one dict per
image, torchvision-style: ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
``scores`` Tensor[N], ``labels`` Tensor[N] int64 in 1..C, ``names`` list[str],
sorted by descending score. The torch ``Detector`` and the onnxruntime
``OnnxDetector`` give the same detections for the same inputs (fp32, up to
float rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ..images import ImageLike, as_image_list, resize_image, to_tensor
from ..postprocess import PostprocessConfig

# A score of 0 is no detection, even at threshold 0.
MIN_SCORE = 1e-6


class Predictor(Protocol):
    """A trained detector, whatever runs it."""

    classes: list[str]  # label l is classes[l - 1]
    image_size: int  # S: images are resized to S x S for the network

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        threshold: float | None = None,
        post: PostprocessConfig | None = None,
        **fields: Any,
    ) -> list[dict]:
        """Detections, one dict per image, selected by ``post`` (default
        ``PostprocessConfig()``) with ``threshold`` (its ``score_threshold``) and any of
        its ``fields`` replaced (``tinyssd.postprocess.resolve_postprocess``)."""
        ...


def input_batch(
    images: ImageLike | Sequence[ImageLike], image_size: int
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Any accepted images -> (``Tensor[B, 3, S, S]`` uint8, each image's (height, width))."""
    tensors = [to_tensor(im) for im in as_image_list(images)]
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
    return torch.stack([resize_image(t, image_size) for t in tensors]), sizes


def with_names(detections: dict[str, Tensor], classes: Sequence[str]) -> dict[str, Any]:
    """One image's detections (on the CPU) with ``names``: ``classes[label - 1]``."""
    record: dict[str, Any] = {k: v.cpu() for k, v in detections.items()}
    record["names"] = [classes[int(i) - 1] for i in record["labels"]]
    return record
