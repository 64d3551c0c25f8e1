"""The onnxruntime predictor: a graph written by ``tinyssd export``, behind ``Predictor``.

    det = OnnxDetector("bananas.onnx")
    det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]

The graph does the network, decoding and NMS (``export/onnx.py``); this class
reads the class names and input size from the model's metadata, resizes the
images as ``Detector`` does and scales the boxes back to each image's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..boxes import normalise_boxes, scale_boxes
from ..images import ImageLike
from ..postprocess import PostprocessConfig
from ..tiling import Tiling
from .base import min_score, model_threshold, predict_images, resolve_for_model, with_names

# numpy dtype fed to the graph, by the ONNX type of its ``images`` input
_INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxDetector:
    """A ``.onnx`` file from ``tinyssd export`` (with NMS), run by onnxruntime.

    ``classes``, ``image_size`` and ``predict`` as ``Detector``'s: the same
    inputs, the same resizing and, in fp32, the same detections up to float
    rounding. ``topk_candidates`` is the graph's (set at export, in its
    metadata); ``max_detections`` may be at most the exported one.

    Args:
        path: the .onnx file.
        providers: onnxruntime execution providers, in order of preference.
        threads: onnxruntime's intra-op threads (None: its default, one per core).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if "classes" not in meta or meta.get("nms") != "true":
            raise ValueError(
                f"{path}: not a tinyssd export with NMS; "
                "write one with `tinyssd export --weights RUN --out FILE.onnx` (without --no-nms)"
            )
        self.classes: list[str] = json.loads(meta["classes"])
        self.image_size = int(meta["image_size"])
        self.max_detections = int(meta["max_detections"])
        self.tiling = Tiling.from_config(meta)  # exported from a model trained with --tile
        self.score_threshold = model_threshold(meta.get("score_threshold"))
        self._input_dtype = _INPUT_DTYPES[self.session.get_inputs()[0].type]

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        threshold: float | None = None,
        post: PostprocessConfig | None = None,
        **fields: Any,
    ) -> list[dict]:
        """Detections with score >= ``threshold``, one dict per image (as ``Detector.predict``).

        Returns:
            per image ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
            ``scores`` Tensor[N], ``labels`` Tensor[N] (1..C), ``names`` list[str].
        Raises:
            ValueError: ``max_detections`` beyond the exported one, or
                ``class_agnostic`` (the graph's NMS is per class).
        """
        post = resolve_for_model(self.score_threshold, post, threshold, **fields)
        if post.max_detections > self.max_detections:
            raise ValueError(
                f"max_detections {post.max_detections}: {self.path} was exported with "
                f"max_detections {self.max_detections}; export again with a larger one"
            )
        if post.class_agnostic:
            raise ValueError(f"class_agnostic: {self.path} does per-class NMS in its graph")
        lowest = min_score(post)

        def detect(batch: Tensor, sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
            boxes, scores, labels, counts = self.session.run(
                None,
                {
                    "images": batch.numpy().astype(self._input_dtype, copy=False),
                    "score_threshold": np.array(lowest, np.float32),
                    "iou_threshold": np.array(post.nms_threshold, np.float32),
                },
            )
            side = (self.image_size, self.image_size)
            out = []
            for b, size in enumerate(sizes):
                n = min(int(counts[b]), post.max_detections)
                # pixels of S -> normalised -> this image's pixels (exact when S is a power of 2)
                pixels = scale_boxes(normalise_boxes(torch.from_numpy(boxes[b, :n]), side), size)
                out.append(
                    {
                        "boxes": pixels,
                        "scores": torch.from_numpy(scores[b, :n]),
                        "labels": torch.from_numpy(labels[b, :n]),
                    }
                )
            return out

        dets = predict_images(detect, images, self.image_size, self.tiling, post)
        return [with_names(d, self.classes) for d in dets]
