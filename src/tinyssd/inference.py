"""Running a trained network: device and precision, autocast, batched prediction, evaluation.

Everything that turns images into detections goes through here: ``tinyssd.load``
/ ``Detector.predict``, the evaluation after each training epoch, ``tinyssd
eval``, the benchmarks and the exporter.

    device = resolve_device("auto")
    dtype = resolve_precision("auto", device)         # torch.bfloat16 or None
    with autocast(device, dtype):
        dets = predict_batch(model, images, sizes)    # one dict per image
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .errors import UsageError
from .options import DEVICES, PRECISIONS
from .postprocess import (
    EVAL_POSTPROCESS,
    PostprocessConfig,
    postprocess_detections,
    resolve_postprocess,
)

if TYPE_CHECKING:
    from .data.dataset import DetectionDataset


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda where available, else mps (Apple GPUs) where available, else cpu;
    UsageError for a device that is not there."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        else:
            name = "mps" if _mps_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available")
    if name.startswith("mps") and not _mps_available():
        raise UsageError(f"--device {name}: no Apple GPU (MPS) is available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: choose from {', '.join(DEVICES)}") from None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device`` (AVX512-BF16/AMX CPUs, Ampere+ GPUs)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return False  # fp32 on Apple GPUs: bf16 autocast there is not checked by tinyssd
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for the forward pass, or None for plain fp32.

    ``auto`` takes bf16 where the device supports it; ``bf16`` where it does
    not is a UsageError. ``fp16`` (CUDA only; training adds a gradient scaler)
    on any other device is a UsageError.
    """
    if name not in PRECISIONS:
        raise UsageError(f"--precision {name!r}: choose from {', '.join(PRECISIONS)}")
    if name == "fp32":
        return None
    if name == "fp16":
        if device.type != "cuda":
            raise UsageError(f"--precision fp16: CUDA only, not {device.type}; use bf16 or fp32")
        return torch.float16
    supported = bf16_supported(device)
    if name == "bf16" and not supported:
        raise UsageError(f"--precision bf16: not supported on this {device.type} device")
    return torch.bfloat16 if supported else None


def autocast(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def predict_batch(
    model: torch.nn.Module,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]] | None = None,
    post: PostprocessConfig = EVAL_POSTPROCESS,
    **fields: Any,
) -> list[dict[str, Tensor]]:
    """Detections for a batch ``Tensor[B, 3, S, S]`` (uint8 or 0-255 float).

    Boxes are scaled to ``image_sizes`` (height, width) per image, else left
    normalised. ``post`` (by default the eval settings, ``EVAL_POSTPROCESS``)
    with ``fields`` replaced (``score_threshold=0.3``) selects the detections.
    The model runs in eval mode and is put back in the mode it was in.
    """
    post = resolve_postprocess(post, **fields)
    was_training = model.training
    model.eval()
    try:
        anchors, cls_logits, box_deltas = model(images)
    finally:
        model.train(was_training)
    sizes = list(image_sizes) if image_sizes is not None else None
    # PostprocessConfig's fields are postprocess_detections' keyword arguments
    return postprocess_detections(
        cls_logits, box_deltas, anchors[0], image_sizes=sizes, **asdict(post)
    )


def _dataset_batches(
    dataset: DetectionDataset, indices: list[int], batch_size: int, device: torch.device | str
) -> Iterator[tuple[list[int], Tensor]]:
    for start in range(0, len(indices), batch_size):
        idx = indices[start : start + batch_size]
        images = torch.stack([dataset[i][0] for i in idx]).to(device)
        yield idx, images.contiguous(memory_format=torch.channels_last)


def predict_dataset(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    indices: list[int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    post: PostprocessConfig = EVAL_POSTPROCESS,
) -> list[dict[str, Tensor]]:
    """Detections for the images of ``dataset`` (all, or ``indices``) in their own pixels,
    selected by ``post`` (by default the eval settings: every score >= 0.01).

    A dataset with ``tiling`` (the val set of a model trained on tiles) is predicted
    by tiles and whole, merged (:func:`tinyssd.tiling.predict_tiled`), as the
    predictors do.
    """
    indices = list(range(len(dataset))) if indices is None else indices
    if dataset.tiling is not None:
        return _predict_dataset_tiled(
            model, dataset, indices, batch_size, device, autocast_dtype, post
        )
    out: list[dict[str, Tensor]] = []
    for idx, images in _dataset_batches(dataset, indices, batch_size, device):
        # DetectionDataset reads every record's size from its image header
        sizes = [cast(tuple[int, int], dataset.records[i].size) for i in idx]
        with autocast(device, autocast_dtype):
            dets = predict_batch(model, images, sizes, post)
        out += [
            {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in d.items()}
            for d in dets
        ]
    return out


def _predict_dataset_tiled(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    indices: list[int],
    batch_size: int,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
    post: PostprocessConfig,
) -> list[dict[str, Tensor]]:
    """``predict_dataset`` for a dataset held at full resolution with ``tiling``."""
    from .tiling import predict_tiled

    def detect(batch: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        batch = batch.to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device, autocast_dtype):
            dets = predict_batch(model, batch, sizes, post)
        return [{k: v.float() if v.is_floating_point() else v for k, v in d.items()} for d in dets]

    out = []
    for start in range(0, len(indices), batch_size):  # a few full images held at a time
        images = [dataset.load_image(i) for i in indices[start : start + batch_size]]
        dets = predict_tiled(
            detect,
            images,
            dataset.image_size,
            dataset.tiling,
            post.nms_threshold,
            post.max_detections,
            batch_size,
            post.class_agnostic,
        )
        out += [{k: v.cpu() for k, v in d.items()} for d in dets]
    return out


def evaluate_dataset(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    post: PostprocessConfig = EVAL_POSTPROCESS,
) -> dict:
    """VOC and COCO metrics of ``model`` on ``dataset`` (``tinyssd.evaluation.evaluate``).

    fp32 unless ``autocast_dtype`` is given: the figures ``tinyssd eval`` reports.
    """
    from .evaluation import evaluate

    predictions = predict_dataset(model, dataset, batch_size, device, None, autocast_dtype, post)
    targets = [dataset.targets_in_pixels(i) for i in range(len(dataset))]
    return evaluate(predictions, targets)
