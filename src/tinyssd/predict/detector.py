"""The torch predictor, and ``load``: a run folder, checkpoint or ``.onnx`` -> a predictor.

det = load("runs/bananas")
det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..checkpoint import read_model_checkpoint, resolve_weights, split_state
from ..data.limits import MAX_IMAGE_PIXELS
from ..errors import CheckpointError, UsageError, first_line
from ..images import ImageLike
from ..inference import autocast, predict_batch, resolve_device, resolve_precision
from ..models import SSD, SSDConfig
from ..models.fuse import fold_batchnorm
from ..options import DEFAULT_THRESHOLD
from ..postprocess import PostprocessConfig
from ..tiling import Tiling
from .base import min_score, model_threshold, predict_images, resolve_for_model, with_names

if TYPE_CHECKING:
    from .onnx_detector import OnnxDetector

log = logging.getLogger("tinyssd")


class Detector:
    """A trained SSD with its class names, ready to predict on images of any size."""

    def __init__(
        self,
        model: SSD,
        classes: Sequence[str],
        device: torch.device,
        precision: str = "auto",
        score_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        # BatchNorm folded into the convolutions: same outputs, fewer passes over memory
        self.model = fold_batchnorm(model).to(device).to(memory_format=torch.channels_last)
        self.autocast_dtype = resolve_precision(precision, device)
        self.classes = list(classes)
        self.device = device
        self.image_size = model.config.image_size
        self.tiling: Tiling | None = None  # trained on tiles: set by load from the config
        self.score_threshold = score_threshold  # predict's default: F1-optimal on val
        # predict's default NMS settings (torchvision's for its COCO detectors)
        self.default_post = PostprocessConfig()

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
        ``PostprocessConfig()``) with ``threshold`` and any other of its fields given
        here (``nms_threshold=0.6``) replaced selects the detections; a threshold
        not given is the model's own, ``self.score_threshold`` (F1-optimal on val), and
        so is a ``box_vote`` not given (``self.default_post``'s).

        Returns:
            per image ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
            ``scores`` Tensor[N], ``labels`` Tensor[N] (1..C), ``names`` list[str].
        """
        post = resolve_for_model(
            self.score_threshold, post or self.default_post, threshold, **fields
        )
        if post.box_vote is None:  # the model's own: torchvision's COCO detectors do not vote
            post = replace(post, box_vote=self.default_post.box_vote)
        lowest = min_score(post)

        def detect(batch: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
            batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.autocast_dtype):
                return predict_batch(self.model, batch, sizes, post, score_threshold=lowest)

        dets = predict_images(detect, images, self.image_size, self.tiling, post)
        return [with_names(d, self.classes) for d in dets]


def load(
    run_or_file: str | Path,
    device: str = "auto",
    precision: str = "auto",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Detector | OnnxDetector:
    """A Detector from a run folder (its best checkpoint), a checkpoint file, an
    exported ``.onnx`` file (run by onnxruntime on the CPU: ``OnnxDetector``), or
    ``coco:ssd300_vgg16`` / ``coco:ssdlite320_mobilenet_v3_large``: torchvision's
    COCO detector (``models.coco``; fetched once into ``$TORCH_HOME/hub/checkpoints``).

    ``precision``: ``"bf16"`` runs the network under bf16 autocast (about twice
    as fast on CPUs with bf16 support; scores differ from fp32 in the second or
    third decimal), ``"fp32"`` without; ``"auto"`` (the default, as in
    training) takes bf16 where the device supports it.

    What the file claims is checked before anything is built from it
    (``checkpoint.check_model_claims``): class names, an input size S with S * S <=
    ``max_pixels`` (``--max-pixels``), finite weights; CheckpointError naming the file.
    """
    if str(run_or_file).lower().endswith(".onnx"):
        return load_onnx(run_or_file, device, precision, max_pixels)
    if str(run_or_file).startswith("coco:"):  # torchvision's COCO detector, 90 classes
        from ..models.coco import COCO_POSTPROCESS, load_coco_detector

        name = str(run_or_file).removeprefix("coco:")
        coco, classes = load_coco_detector(name)
        log.info("loaded %s (torchvision's COCO weights)", run_or_file)
        det = Detector(coco, classes, resolve_device(device), precision)
        # torchvision's NMS, top-k and detection count; the threshold stays the drawn one
        # (0.5): threshold=COCO_POSTPROCESS[name].score_threshold gives torchvision's list
        det.default_post = replace(COCO_POSTPROCESS[name], score_threshold=None)
        return det
    path = resolve_weights(run_or_file)
    tensors, meta = read_model_checkpoint(path, max_pixels)
    log.info("loaded %s (epoch %s)", path, meta.get("epoch", "?"))
    cfg = meta["config"]
    model = _rebuild_model(path, cfg, split_state(tensors, "model."))
    try:
        tiling = Tiling.from_config(cfg.get("train") or {})  # trained with --tile
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: config train.tile is not a tile size ({e})") from None
    stored = (meta.get("extra") or {}).get("score_threshold")
    detector = Detector(
        model, cfg["classes"], resolve_device(device), precision, model_threshold(stored)
    )
    detector.tiling = tiling
    return detector


def _rebuild_model(path: Path, cfg: dict[str, Any], state: dict[str, Tensor]) -> SSD:
    """The SSD of a checkpoint's (claims-checked) config with its ``model.`` weights.

    The network is laid out on the meta device first (no memory), so a config whose
    tensors are not the file's (say 10**6 channels) fails in one line before any
    allocation; CheckpointError naming the file.
    """
    try:
        config = SSDConfig.from_dict(cfg["ssd"])
        with torch.device("meta"):
            layout = {k: v.shape for k, v in SSD(cfg["num_classes"], config).state_dict().items()}
        given = {k: v.shape for k, v in state.items()}
        if layout != given:
            name = min(k for k in layout.keys() | given.keys() if layout.get(k) != given.get(k))
            raise ValueError(
                f"{name}: {_shape(given.get(name))} in the file, "
                f"{_shape(layout.get(name))} in its config's network"
            )
        model = SSD(cfg["num_classes"], config)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model ({first_line(e)})") from None
    return model


def _shape(shape: torch.Size | None) -> str:
    return str(tuple(shape)) if shape is not None else "absent"


def load_onnx(
    path: str | Path,
    device: str = "auto",
    precision: str = "auto",
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> OnnxDetector:
    """An exported graph run by onnxruntime: CPU, fp32 (what the graph holds); its
    metadata checked as a checkpoint's (``OnnxDetector``)."""
    from .onnx_detector import OnnxDetector

    if device not in ("auto", "cpu"):
        raise UsageError(f"--device {device}: the onnx backend runs on the CPU here")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--precision {precision}: an exported graph runs in fp32")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    detector = OnnxDetector(path, max_pixels=max_pixels)
    log.info("loaded %s (onnxruntime)", path)
    return detector
