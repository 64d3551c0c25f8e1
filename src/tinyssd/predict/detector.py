"""The torch predictor, and ``load``: a run folder, checkpoint or ``.onnx`` -> a predictor.

det = load("runs/bananas")
det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import read_checkpoint, resolve_weights, split_state
from ..errors import CheckpointError, UsageError
from ..images import ImageLike
from ..inference import autocast, predict_batch, resolve_device, resolve_precision
from ..models import SSD, SSDConfig
from ..models.fuse import fold_batchnorm
from ..postprocess import PostprocessConfig, resolve_postprocess
from .base import MIN_SCORE, input_batch, with_names

if TYPE_CHECKING:
    from .onnx_detector import OnnxDetector

log = logging.getLogger("tinyssd")


class Detector:
    """A trained SSD with its class names, ready to predict on images of any size."""

    def __init__(
        self, model: SSD, classes: Sequence[str], device: torch.device, precision: str = "auto"
    ) -> None:
        # BatchNorm folded into the convolutions: same outputs, fewer passes over memory
        self.model = fold_batchnorm(model).to(device).to(memory_format=torch.channels_last)
        self.autocast_dtype = resolve_precision(precision, device)
        self.classes = list(classes)
        self.device = device
        self.image_size = model.config.image_size

    @torch.inference_mode()
    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        threshold: float | None = None,
        post: PostprocessConfig | None = None,
        **fields: Any,
    ) -> list[dict]:
        """Detections with score >= ``threshold``, one dict per image.

        ``images``: one image or a list of them (paths, PIL images, uint8
        ``[3, H, W]`` tensors, uint8 ``[H, W, 3]`` arrays), or a 4-D batch
        (tensor ``[B, 3, H, W]`` or array ``[B, H, W, 3]``). ``post`` (default
        ``PostprocessConfig()``: threshold 0.5) with ``threshold`` and any other of
        its fields given here (``nms_threshold=0.6``) replaced selects the detections.

        Returns:
            per image ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
            ``scores`` Tensor[N], ``labels`` Tensor[N] (1..C), ``names`` list[str].
        """
        post = resolve_postprocess(post, threshold, **fields)
        batch, sizes = input_batch(images, self.image_size)
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        min_score = max(post.score_threshold, MIN_SCORE)
        with autocast(self.device, self.autocast_dtype):
            dets = predict_batch(self.model, batch, sizes, post, score_threshold=min_score)
        return [with_names(d, self.classes) for d in dets]


def load(
    run_or_file: str | Path, device: str = "auto", precision: str = "auto"
) -> Detector | OnnxDetector:
    """A Detector from a run folder (its best checkpoint), a checkpoint file, or an
    exported ``.onnx`` file (run by onnxruntime on the CPU: ``OnnxDetector``).

    ``precision``: ``"bf16"`` runs the network under bf16 autocast (about twice
    as fast on CPUs with bf16 support; scores differ from fp32 in the second or
    third decimal), ``"fp32"`` without; ``"auto"`` (the default, as in
    training) takes bf16 where the device supports it.
    """
    if str(run_or_file).lower().endswith(".onnx"):
        return load_onnx(run_or_file, device, precision)
    path = resolve_weights(run_or_file)
    tensors, meta = read_checkpoint(path)
    log.info("loaded %s (epoch %s)", path, meta.get("epoch", "?"))
    try:
        cfg = meta["config"]
        model = SSD(cfg["num_classes"], SSDConfig.from_dict(cfg["ssd"]))
        model.load_state_dict(split_state(tensors, "model."))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model ({first})") from None
    return Detector(model, cfg["classes"], resolve_device(device), precision)


def load_onnx(path: str | Path, device: str = "auto", precision: str = "auto") -> OnnxDetector:
    """An exported graph run by onnxruntime: CPU, fp32 (what the graph holds)."""
    from .onnx_detector import OnnxDetector

    if device not in ("auto", "cpu"):
        raise UsageError(f"--device {device}: the onnx backend runs on the CPU here")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--precision {precision}: an exported graph runs in fp32")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    log.info("loaded %s (onnxruntime)", path)
    return OnnxDetector(path)
