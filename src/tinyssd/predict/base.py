"""What every predictor is: the ``Predictor`` interface, and the input batch it builds.

A predictor takes any images (``tinyssd.images.ImageLike``: paths, PIL images,
uint8 tensors and arrays, lists of them, 4-D batches) and returns one dict per
image, torchvision-style: ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
``scores`` Tensor[N], ``labels`` Tensor[N] int64 in 1..C, ``names`` list[str],
sorted by descending score. The torch ``Detector`` and the onnxruntime
``OnnxDetector`` give the same detections for the same inputs (fp32, up to
float rounding): both predict through :func:`predict_images`, by tiles and the
whole image for a model trained on tiles (``tinyssd train --tile``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from ..images import ImageLike, as_image_list, resize_image, to_tensor
from ..options import DEFAULT_THRESHOLD
from ..postprocess import PostprocessConfig, resolve_postprocess
from ..tiling import Detect, Tiling, predict_tiled

# A score of 0 is no detection, even at threshold 0.
MIN_SCORE = 1e-6


class Predictor(Protocol):
    """A trained detector, whatever runs it."""

    classes: list[str]  # label l is classes[l - 1]
    image_size: int  # S: images are resized to S x S for the network
    tiling: Tiling | None  # trained on tiles: large images are predicted by tiles + whole
    score_threshold: float  # the default threshold: F1-optimal on val where stored

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


def model_threshold(value: object) -> float:
    """A stored score threshold (checkpoint or graph metadata) if it is one, else
    ``DEFAULT_THRESHOLD``: a number in (0, 1]."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_THRESHOLD
    return number if 0 < number <= 1 else DEFAULT_THRESHOLD


def resolve_for_model(
    score_threshold: float,
    post: PostprocessConfig | None,
    threshold: float | None,
    **fields: Any,
) -> PostprocessConfig:
    """``resolve_postprocess``, then the model's own ``score_threshold`` where none was given."""
    post = resolve_postprocess(post, threshold, **fields)
    if post.score_threshold is None:
        post = resolve_postprocess(post, score_threshold)
    return post


def min_score(post: PostprocessConfig) -> float:
    """The lowest score a resolved ``post`` (``resolve_for_model``'s) reports."""
    if post.score_threshold is None:
        raise ValueError("score_threshold not resolved: use resolve_for_model")
    return max(post.score_threshold, MIN_SCORE)


def input_batch(
    images: ImageLike | Sequence[ImageLike], image_size: int
) -> tuple[Tensor, list[tuple[int, int]]]:
    """Any accepted images -> (``Tensor[B, 3, S, S]`` uint8, each image's (height, width))."""
    tensors = [to_tensor(im) for im in as_image_list(images)]
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
    return torch.stack([resize_image(t, image_size) for t in tensors]), sizes


def predict_images(
    detect: Detect,
    images: ImageLike | Sequence[ImageLike],
    image_size: int,
    tiling: Tiling | None,
    post: PostprocessConfig,
) -> list[dict[str, Tensor]]:
    """Any accepted images -> detections in each image's pixels: every predictor's path.

    ``detect`` runs a backend's network and selection on a uint8 batch
    ``Tensor[B, 3, S, S]`` and returns each item's detections in the (height,
    width) given for it. Without ``tiling`` (or for an image no larger than 1.5
    tiles) an image is resized whole to S; a larger one is predicted by its tiles
    and whole, merged by ``post``'s NMS (:func:`tinyssd.tiling.predict_tiled`).
    """
    tensors = [to_tensor(im) for im in as_image_list(images)]
    if tiling is None:  # one batch, as without tiles
        batch, sizes = input_batch(tensors, image_size)
        return detect(batch, sizes)
    return predict_tiled(
        detect,
        tensors,
        image_size,
        tiling,
        post.nms_threshold,
        post.max_detections,
        class_agnostic=post.class_agnostic,
    )


def with_names(detections: dict[str, Tensor], classes: Sequence[str]) -> dict[str, Any]:
    """One image's detections (on the CPU) with ``names``: ``classes[label - 1]``."""
    record: dict[str, Any] = {k: v.cpu() for k, v in detections.items()}
    record["names"] = [classes[int(i) - 1] for i in record["labels"]]
    return record
