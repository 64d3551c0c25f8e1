"""The onnxruntime predictor: a graph written by ``tinyssd export``, behind ``Predictor``.

    det = OnnxDetector("bananas.onnx")
    det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]

The graph does the network, decoding and NMS (``export/onnx.py``); this class
reads the class names and input size from the model's metadata, resizes the
images as ``Detector`` does and scales the boxes back to each image's pixels.
What the file claims is checked as a checkpoint's is (:func:`read_graph`,
``checkpoint.check_model_claims``): one CheckpointError naming the file for a
truncated graph, bad metadata, an input over the pixel budget, NaN weights or a
graph exported with ``--no-nms``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..boxes import normalise_boxes, scale_boxes
from ..checkpoint import check_finite, check_model_claims, decode_json
from ..data.limits import MAX_IMAGE_PIXELS
from ..errors import CheckpointError, UsageError, first_line
from ..images import ImageLike
from ..postprocess import PostprocessConfig
from ..tiling import Tiling
from .base import min_score, model_threshold, predict_images, resolve_for_model, with_names

# numpy dtype fed to the graph, by the ONNX type of its ``images`` input
_INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32}
_INPUTS = ["images", "score_threshold", "iou_threshold"]  # an export with NMS, in order
_EXPORT = "tinyssd export --weights RUN --out FILE.onnx"


@dataclass(frozen=True)
class GraphClaims:
    """What a ``tinyssd export`` graph's metadata says, checked (:func:`read_graph`)."""

    classes: list[str]  # label l is classes[l - 1]
    image_size: int  # S: the graph takes S x S images
    max_detections: int  # D: rows per image of its outputs
    tiling: Tiling | None  # exported from a model trained on tiles
    score_threshold: float  # the default threshold stored at export
    box_vote: float  # score voting's sigma, fixed in the graph (0: none; graphs before it: 0)


def read_graph(path: str | Path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[bytes, GraphClaims]:
    """A ``tinyssd export`` graph with NMS: (its bytes, its checked metadata).

    CheckpointError naming the file when it is not a readable ONNX model
    (truncated), not a tinyssd export, exported with ``--no-nms``, or when its
    metadata or weights do not hold (``checkpoint.check_model_claims``, ``check_finite``).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    try:
        data = path.read_bytes()
        proto = onnx.load_model_from_string(data)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such ONNX file") from None
    except (DecodeError, RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable ONNX file (truncated?): {first_line(e)}"
        ) from None
    meta = {p.key: p.value for p in proto.metadata_props}
    if "classes" not in meta:  # written last by tinyssd export: absent from a cut file too
        raise CheckpointError(
            f"{path}: not a tinyssd export (no classes in its metadata; truncated?)"
        )
    if meta.get("nms") != "true":
        raise CheckpointError(
            f"{path}: exported with --no-nms (raw boxes and scores, no NMS); predict needs "
            f"the detections: write a graph with `{_EXPORT}` (without --no-nms)"
        )
    classes, image_size = check_model_claims(
        path,
        decode_json(path, meta["classes"], "metadata classes"),
        _integer(path, meta, "image_size"),
        max_pixels,
    )
    max_detections = _integer(path, meta, "max_detections")
    if max_detections is None or max_detections <= 0:
        raise CheckpointError(f"{path}: metadata max_detections {max_detections}: must be > 0")
    try:
        tiling = Tiling.from_config(meta)  # exported from a model trained with --tile
    except ValueError as e:
        raise CheckpointError(f"{path}: metadata tile is not a tile size ({e})") from None
    check_finite(path, _float_weights(proto))
    claims = GraphClaims(
        classes,
        image_size,
        max_detections,
        tiling,
        model_threshold(meta.get("score_threshold")),
        _box_vote(path, meta),
    )
    return data, claims


def _integer(path: Path, meta: dict[str, str], key: str) -> int | None:
    """``meta[key]`` as an int (None when absent); CheckpointError if it is not one."""
    if key not in meta:
        return None
    try:
        return int(meta[key])
    except ValueError:
        raise CheckpointError(f"{path}: metadata {key} {meta[key]!r}: not an integer") from None


def _box_vote(path: Path, meta: dict[str, str]) -> float:
    """``meta["box_vote"]`` as a number in [0, 1] (0 when absent: a graph exported before
    box voting); CheckpointError if it is not one."""
    try:
        vote = float(meta.get("box_vote", 0.0))
    except ValueError:
        vote = math.nan
    if not 0 <= vote <= 1:
        raise CheckpointError(f"{path}: metadata box_vote {meta['box_vote']!r}: not in [0, 1]")
    return vote


def _float_weights(proto: Any) -> Iterator[tuple[str, Tensor]]:
    """The graph's floating-point initializers and constants, by name, as tensors."""
    from onnx import numpy_helper

    tensors = [*proto.graph.initializer]
    for node in proto.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if array.dtype.kind == "f":
            yield tensor.name or "a constant", torch.from_numpy(np.array(array))


def _session(
    path: Path, data: bytes, image_size: int, options: Any, providers: Sequence[str]
) -> Any:
    """onnxruntime's session of the graph ``data``; CheckpointError naming ``path`` when
    it cannot load it or its inputs are not a tinyssd export's of ``image_size``."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    # onnxruntime's own errors, which derive from Exception alone
    errors = (
        state.Fail,
        state.InvalidArgument,
        state.InvalidGraph,
        state.InvalidProtobuf,
        state.NotImplemented,
        state.RuntimeException,
        RuntimeError,
    )
    try:
        session = ort.InferenceSession(data, options, providers=list(providers))
    except errors as e:
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
    inputs = session.get_inputs()
    if [i.name for i in inputs] != _INPUTS or inputs[0].type not in _INPUT_DTYPES:
        found = ", ".join(f"{i.name} {i.type}" for i in inputs)
        raise CheckpointError(
            f"{path}: inputs {found}: not a tinyssd export's ({', '.join(_INPUTS)}); "
            f"write one with `{_EXPORT}`"
        )
    if list(inputs[0].shape[1:]) != [3, image_size, image_size]:
        raise CheckpointError(
            f"{path}: metadata image_size {image_size}, but the graph takes images of "
            f"shape {inputs[0].shape}"
        )
    return session


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
        max_pixels: the largest input S * S the metadata may claim (``--max-pixels``).
    Raises:
        CheckpointError: naming the file, for anything :func:`read_graph` refuses or
            onnxruntime cannot load.
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        data, claims = read_graph(self.path, max_pixels)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = _session(self.path, data, claims.image_size, options, providers)
        self.classes = claims.classes
        self.image_size = claims.image_size
        self.max_detections = claims.max_detections
        self.tiling = claims.tiling
        self.score_threshold = claims.score_threshold
        self.box_vote = claims.box_vote
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
            UsageError: ``max_detections`` beyond the exported one, ``class_agnostic``
                (the graph's NMS is per class), or a ``box_vote`` other than the graph's.
        """
        post = resolve_for_model(self.score_threshold, post, threshold, **fields)
        if post.max_detections > self.max_detections:
            raise UsageError(
                f"--max-detections {post.max_detections}: {self.path} was exported with "
                f"max_detections {self.max_detections}; export again with a larger "
                "--max-detections"
            )
        if post.class_agnostic:
            raise UsageError(
                f"--class-agnostic: {self.path} does per-class NMS in its graph; "
                "predict with the checkpoint instead"
            )
        if post.box_vote is not None and post.box_vote != self.box_vote:
            raise UsageError(
                f"--box-vote {post.box_vote:g}: {self.path} was exported with box_vote "
                f"{self.box_vote:g} (fixed in the graph); export again with --box-vote "
                f"{post.box_vote:g}"
            )
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
            if labels.size and int(labels.max()) > len(self.classes):  # else names fail
                raise CheckpointError(
                    f"{self.path}: the graph predicts label {int(labels.max())} but its metadata "
                    f"classes list only {len(self.classes)}"
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
