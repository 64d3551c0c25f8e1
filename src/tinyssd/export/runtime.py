"""An exported detector run by onnxruntime, behind ``tinyssd.api.Detector``'s interface.

    det = OnnxDetector("bananas.onnx")        # written by `tinyssd export`
    det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]

The graph does the network, decoding and NMS (``export/onnx.py``); this class
reads the class names and input size from the model's metadata, resizes the
images as ``Detector`` does and scales the boxes back to each image's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch

from ..api import ImageLike, _to_tensor
from ..data.dataset import resize_image

# numpy dtype fed to the graph, by the ONNX type of its ``images`` input
_INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}


class OnnxDetector:
    """A ``.onnx`` file from ``tinyssd export`` (with NMS), run by onnxruntime.

    ``classes``, ``image_size`` and ``predict`` as ``Detector``'s: the same
    resizing and, in fp32, the same detections up to float rounding.

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
        self._input_dtype = _INPUT_DTYPES[self.session.get_inputs()[0].type]

    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        threshold: float = 0.5,
        nms_threshold: float = 0.45,
        max_detections: int = 200,
    ) -> list[dict]:
        """Detections with score >= ``threshold``, one dict per image.

        Returns:
            per image ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
            ``scores`` Tensor[N], ``labels`` Tensor[N] (1..C), ``names`` list[str].
        """
        if max_detections > self.max_detections:
            raise ValueError(
                f"max_detections {max_detections}: {self.path} was exported with "
                f"max_detections {self.max_detections}; export again with a larger one"
            )
        image_list = images if isinstance(images, (list, tuple)) else [cast(ImageLike, images)]
        tensors = [_to_tensor(im) for im in image_list]
        batch = torch.stack([resize_image(t, self.image_size) for t in tensors])
        boxes, scores, labels, counts = self.session.run(
            None,
            {
                "images": batch.numpy().astype(self._input_dtype, copy=False),
                "score_threshold": np.array(max(threshold, 1e-6), np.float32),
                "iou_threshold": np.array(nms_threshold, np.float32),
            },
        )
        out = []
        for b, image in enumerate(tensors):
            n = min(int(counts[b]), max_detections)
            h, w = image.shape[-2:]
            # pixels of S -> normalised -> this image's pixels (exact when S is a power of 2)
            pixels = torch.from_numpy(boxes[b, :n]) / self.image_size * torch.tensor([w, h, w, h])
            det_labels = torch.from_numpy(labels[b, :n])
            out.append(
                {
                    "boxes": pixels,
                    "scores": torch.from_numpy(scores[b, :n]),
                    "labels": det_labels,
                    "names": [self.classes[int(i) - 1] for i in det_labels],
                }
            )
        return out
