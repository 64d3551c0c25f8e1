"""ONNX export: the network, box decoding and, by default, per-class NMS in one graph.

    tinyssd export --weights runs/bananas --out bananas.onnx           # detections
    tinyssd export --weights runs/bananas --out raw.onnx --no-nms      # boxes + scores
    tinyssd export --weights runs/bananas --out int8.onnx --int8       # int8 backbone

With NMS (the default) the graph's inputs are

- ``images`` (B, 3, S, S) uint8 RGB pixels, already resized to S x S (export
  with ``input_dtype="float32"`` for 0-255 floats instead); the graph
  normalises them itself,
- ``score_threshold``, ``iou_threshold``: float32 scalars (shape ``()``), a
  ``PostprocessConfig``'s ``score_threshold`` and ``nms_threshold``,

and its outputs ``boxes`` (B, D, 4) float32 xyxy in the input's pixels,
clipped to 0..S, ``scores`` (B, D) float32, ``labels`` (B, D) int64 in 1..C and
``num_detections`` (B,) int64: image b's detections are its first
``num_detections[b]`` rows, by descending score; the rows after them are
zeros (label 0 = background). D is the ``max_detections`` of the export's
``PostprocessConfig`` (as is ``topk_candidates``). The selection is
``postprocess_detections``' (what ``Detector.predict`` returns): softmax; the
``topk_candidates`` best (anchor, class) pairs per image; those with score >=
``score_threshold`` go through ONNX ``NonMaxSuppression`` per class; the best D
survivors are kept, each replaced by the score-weighted mean of the candidates
of its class that overlap it (score voting, ``postprocess.vote_boxes``, with the
export's ``box_vote`` as sigma; fixed in the graph, 0: off).

Without NMS (``nms=False``) the only input is ``images`` and the outputs are
``boxes`` (B, A, 4) normalised xyxy and ``scores`` (B, A, K) class
probabilities (background at 0), the inputs of any NMS.

``metadata_props`` (strings): ``classes`` (JSON list, label i is
``classes[i - 1]``), ``image_size`` (S), ``pixel_mean`` and ``pixel_std``
(JSON lists, applied inside the graph: feed 0-255 pixels), ``input_range``,
``model`` (preset name), ``nms`` (``true``/``false``) and, with NMS,
``topk_candidates``, ``max_detections`` and ``box_vote``; for a model trained on tiles
(``tinyssd train --tile``) ``tile`` and ``tile_overlap``; an int8 graph (``--int8``,
``export/quantize.py``) has the same inputs, outputs and metadata, plus
``quantization`` (what was quantized, calibrated on which images).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..boxes import decode_offsets, scale_boxes
from ..data.limits import MAX_IMAGE_PIXELS
from ..errors import UsageError
from ..files import atomic_path
from ..options import DEFAULT_BOX_VOTE, DEFAULT_CALIBRATION_IMAGES
from ..postprocess import EVAL_POSTPROCESS, PostprocessConfig, resolve_postprocess, vote_boxes
from ..tiling import Tiling

if TYPE_CHECKING:
    from ..models import SSDConfig
    from ..predict import Detector

MIN_OPSET = 17  # the oldest tested; NonMaxSuppression and TopK as used here need 11
INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
# Score of a (candidate, class) pair that is not a candidate of that class. NMS is
# told to drop scores <= half of it: between this and any probability (>= 0),
# so runtimes that drop "< threshold" and those that drop "<= threshold" agree.
_NOT_CANDIDATE = -1.0


def max_opset() -> int:
    """The newest opset this torch's TorchScript exporter supports (20 in torch 2.14;
    newer ones it writes with a warning that they are not supported)."""
    from torch.onnx import _constants  # torch has no public name for it

    # a torch without the TorchScript exporter's own maximum: the general one
    newest = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_MAX_OPSET)
    return int(newest)


def check_opset(opset: object) -> int:
    """``opset`` if tinyssd exports it (``MIN_OPSET`` to :func:`max_opset`), else a
    UsageError naming ``--opset`` and the supported range."""
    newest = max_opset()
    if type(opset) is not int or not MIN_OPSET <= opset <= newest:
        raise UsageError(f"--opset {opset}: tinyssd exports opsets {MIN_OPSET} to {newest}")
    return opset


class ExportWrapper(nn.Module):
    """SSD -> (decoded boxes, class probabilities); anchors become constants."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        anchors, cls_logits, box_deltas = self.model(images)
        boxes = decode_offsets(anchors, box_deltas.reshape(box_deltas.shape[0], -1, 4))
        return boxes, torch.softmax(cls_logits, dim=-1)


def _pairwise_iou(boxes: Tensor) -> Tensor:
    """``Tensor[..., N, 4]`` xyxy -> ``Tensor[..., N, N]``: IoU of every pair in each set."""
    x1, y1, x2, y2 = (c[..., :, None] for c in boxes.unbind(-1))  # (..., N, 1) each
    area = (x2 - x1) * (y2 - y1)
    iw = (torch.minimum(x2, x2.mT) - torch.maximum(x1, x1.mT)).clamp(min=0)
    ih = (torch.minimum(y2, y2.mT) - torch.maximum(y1, y1.mT)).clamp(min=0)
    inter = iw * ih
    return inter / (area + area.mT - inter)


def greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: Tensor, min_score: float) -> Tensor:
    """ONNX ``NonMaxSuppression``'s result, in tensor ops only (no Python numbers).

    Per image and class, boxes are visited by descending score; one is kept
    unless a kept box overlaps it with IoU > ``iou_threshold``; boxes scoring
    <= ``min_score`` take no part.

    Args:
        boxes (Tensor[B, N, 4]): xyxy.
        scores (Tensor[B, C, N]): score of each box for each class.
        iou_threshold (Tensor[]): IoU above which the lower-scored box goes.
    Returns:
        Tensor[S, 3] int64: (image, class, box) of the kept boxes, by image,
        then class, then descending score (ONNX's ``selected_indices``).
    """
    order = scores.argsort(dim=-1, descending=True, stable=True)  # (B, C, N)
    sorted_boxes = boxes[:, None].expand(-1, scores.shape[1], -1, -1)
    sorted_boxes = sorted_boxes.gather(2, order[..., None].expand(-1, -1, -1, 4))  # (B, C, N, 4)
    # suppresses[b, c, i, j]: box i, if kept, removes the later box j
    suppresses = (_pairwise_iou(sorted_boxes) > iou_threshold).triu(diagonal=1)  # (B, C, N, N)
    keep = scores.gather(-1, order) > min_score  # (B, C, N)
    for i in range(scores.shape[-1]):
        keep = keep & ~(suppresses[..., i, :] & keep[..., i, None])
    image, cls, rank = keep.nonzero(as_tuple=True)
    return torch.stack((image, cls, order[image, cls, rank]), dim=1)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` in the exported graph; ``greedy_nms`` when run eagerly.

    ``max_per_class`` is for the graph only: it must be at least N (all boxes).
    """

    @staticmethod
    def forward(
        ctx,
        boxes: Tensor,
        scores: Tensor,
        iou_threshold: Tensor,
        max_per_class: int,
        min_score: float,
    ) -> Tensor:
        return greedy_nms(boxes, scores, iou_threshold, min_score)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold, max_per_class: int, min_score: float):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            iou_threshold,
            g.op("Constant", value_t=torch.tensor([min_score], dtype=torch.float32)),
        )


class _ConstantAnchors:
    """Stands in for an SSD's anchor generator: its anchors for one input size."""

    def __init__(self, anchors: Tensor) -> None:
        self.anchors = anchors  # (A, 4)

    def __call__(self, shapes: object, device: object) -> Tensor:
        return self.anchors


def fixed_size_copy(model: nn.Module, image_size: int) -> nn.Module:
    """A copy of ``model`` for S x S inputs only, its anchors computed once.

    The generator derives anchors from the feature maps' shapes, which are
    tensors while tracing: the trace would rebuild them, warning at each step.
    """
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    with torch.no_grad():
        anchors = model(torch.zeros(1, 3, image_size, image_size))[0]  # (1, A, 4)
    # torch types module attributes as Tensor | Module, but any object may be set
    model.anchor_generator = _ConstantAnchors(anchors[0])  # type: ignore[assignment]
    return model


class DetectionWrapper(nn.Module):
    """SSD -> padded detections per image, ``postprocess_detections``' selection.

    ``post`` gives ``topk_candidates``, ``max_detections`` (D) and ``box_vote`` (None:
    ``DEFAULT_BOX_VOTE``); its thresholds are the graph's inputs.
    ``forward(images, score_threshold, iou_threshold)``: images Tensor[B, 3, S, S]
    (uint8 or 0-255 float), thresholds Tensor[] ->
    ``boxes`` Tensor[B, D, 4] xyxy in pixels of S, clipped to the image,
    ``scores`` Tensor[B, D], ``labels`` Tensor[B, D] (1..C, 0 in padding rows),
    ``num_detections`` Tensor[B]. Used eagerly it gives what
    ``postprocess_detections`` gives, up to ties in score.
    """

    def __init__(
        self, model: nn.Module, image_size: int, post: PostprocessConfig | None = None
    ) -> None:
        super().__init__()
        post = post if post is not None else PostprocessConfig()
        self.model = model
        self.image_size = image_size
        with torch.no_grad():
            anchors, cls_logits, _ = model(torch.zeros(1, 3, image_size, image_size))
        self.num_classes = cls_logits.shape[-1] - 1
        self.topk = min(post.topk_candidates, anchors.shape[1] * self.num_classes)
        self.max_detections = min(post.max_detections, self.topk)
        self.box_vote = DEFAULT_BOX_VOTE if post.box_vote is None else post.box_vote

    def forward(
        self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        anchors, cls_logits, box_deltas = self.model(images)
        batch = box_deltas.shape[0]
        probs = torch.softmax(cls_logits, dim=-1)[..., 1:].flatten(1)  # (B, A*C)
        top_scores, top_idx = probs.topk(self.topk, dim=1)  # (B, k); index = anchor * C + class-1
        labels = top_idx % self.num_classes + 1
        anchor_idx = (top_idx // self.num_classes)[..., None].expand(-1, -1, 4)  # (B, k, 4)
        # only the candidates' boxes are decoded: k of the A anchors
        cand_deltas = box_deltas.reshape(batch, -1, 4).gather(1, anchor_idx)
        cand_anchors = anchors.expand(batch, -1, -1).gather(1, anchor_idx)
        cand_boxes = decode_offsets(cand_anchors, cand_deltas).clamp(0.0, 1.0)  # (B, k, 4)
        classes = torch.arange(1, self.num_classes + 1, device=labels.device)[:, None]  # (C, 1)
        is_candidate = (labels[:, None] == classes) & (top_scores >= score_threshold)[:, None]
        class_scores = torch.where(is_candidate, top_scores[:, None], _NOT_CANDIDATE)  # (B, C, k)
        selected = _NonMaxSuppression.apply(
            cand_boxes, class_scores, iou_threshold, self.topk, _NOT_CANDIDATE / 2
        )
        kept = torch.zeros_like(top_scores, dtype=torch.bool)
        kept[selected[:, 0], selected[:, 2]] = True
        scores, order = torch.where(kept, top_scores, _NOT_CANDIDATE).topk(self.max_detections)
        valid = kept.gather(1, order)  # (B, D)
        det_boxes = cand_boxes.gather(1, order[..., None].expand(-1, -1, 4))
        if self.box_vote > 0:
            voters = torch.where(top_scores >= score_threshold, top_scores, 0.0)  # (B, k)
            pair = (labels.gather(1, order), labels)
            det_boxes = vote_boxes(det_boxes, cand_boxes, voters, self.box_vote, pair)
        det_boxes = scale_boxes(det_boxes, (self.image_size, self.image_size))
        return (
            torch.where(valid[..., None], det_boxes, 0.0),
            torch.where(valid, scores, 0.0),
            torch.where(valid, labels.gather(1, order), 0),
            valid.sum(dim=1),
        )


def export_model(
    model: nn.Module,
    classes: list[str],
    out: str | Path,
    opset: int = 17,
    nms: bool = True,
    post: PostprocessConfig | None = None,
    input_dtype: str = "uint8",
    tiling: Tiling | None = None,
    **fields: Any,
) -> Path:
    """Write ``out`` (.onnx) for an SSD (float32) and its class names.

    ``post`` (default ``PostprocessConfig()``) with any of its ``fields`` replaced
    (``max_detections=50``) gives the graph's ``topk_candidates`` and
    ``max_detections``. ``tiling``: the model was trained on tiles (its ``tile`` and
    ``tile_overlap`` go into the metadata, for ``OnnxDetector`` to predict by tiles).
    See the module docstring for the graph's inputs, outputs and metadata.
    """
    post = resolve_postprocess(post, **fields)
    if post.class_agnostic:
        raise ValueError("class_agnostic: the exported graph does per-class NMS")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype {input_dtype!r}: choose from {', '.join(INPUT_DTYPES)}")
    check_opset(opset)
    config = cast("SSDConfig", model.config)  # an SSD's (torch types it Tensor | Module)
    size = config.image_size
    model = fixed_size_copy(model, size)
    example = torch.zeros(1, 3, size, size, dtype=INPUT_DTYPES[input_dtype])
    args: tuple[Tensor, ...]
    if nms:
        wrapper: nn.Module = DetectionWrapper(model, size, post)
        # the thresholds are inputs: any example values
        thresholds = (EVAL_POSTPROCESS.score_threshold, EVAL_POSTPROCESS.nms_threshold)
        args = (example, *map(torch.tensor, thresholds))
        inputs = ["images", "score_threshold", "iou_threshold"]
        outputs = ["boxes", "scores", "labels", "num_detections"]
    else:
        wrapper, args = ExportWrapper(model), (example,)
        inputs, outputs = ["images"], ["boxes", "scores"]
    meta = {
        "classes": json.dumps(list(classes)),
        "image_size": str(size),
        "pixel_mean": json.dumps(list(config.pixel_mean)),
        "pixel_std": json.dumps(list(config.pixel_std)),
        "input_range": "0-255 RGB, resized to image_size x image_size; normalised in the graph",
        "model": config.name,
        "nms": json.dumps(nms),
    }
    if isinstance(wrapper, DetectionWrapper):
        meta |= {
            "topk_candidates": str(wrapper.topk),
            "max_detections": str(wrapper.max_detections),
            "box_vote": repr(float(wrapper.box_vote)),
        }
    if tiling is not None:  # trained on tiles: OnnxDetector predicts large images by tiles
        meta |= {"tile": str(tiling.tile), "tile_overlap": repr(float(tiling.overlap))}
    if post.score_threshold is not None:  # the default threshold of the graph's predictor
        meta["score_threshold"] = repr(float(post.score_threshold))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:  # never half a graph, nor one without its metadata
        _trace(wrapper, args, tmp, inputs, outputs, opset)
        _add_metadata(tmp, meta)
    return out


def _trace(
    wrapper: nn.Module,
    args: tuple[Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    opset: int,
) -> None:
    """``torch.onnx.export`` of ``wrapper`` to ``path``, batch dimension dynamic."""
    with warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deliberate: it takes NonMaxSuppression
        # from a symbolic and needs no onnxscript; its deprecation notices are not for users.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shapes fixed
        torch.onnx.export(
            wrapper.eval(),
            args,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["images", *outputs]},
            opset_version=opset,
            dynamo=False,
        )


def _add_metadata(path: Path, meta: dict[str, str]) -> Path:
    import onnx

    proto = onnx.load(str(path))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def export_onnx(
    weights: str | Path,
    out: str | Path,
    opset: int = 17,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    **options: Any,
) -> Path:
    """Write ``out`` (.onnx) for a checkpoint or run folder (``export_model``'s ``options``:
    ``nms``, ``post``, ``input_dtype`` and PostprocessConfig's fields; the score threshold
    and ``box_vote`` left open are the model's own). ``max_pixels``:
    the largest input S * S the checkpoint may claim (``--max-pixels``, see ``load``).

    ``int8``: the graph quantized to int8 (``export/quantize.py``), calibrated on
    ``calibration_images`` images of ``calibration`` (a run folder, a data folder
    or a folder of images; None: the training images of the run ``weights`` is from).
    """
    from ..predict import Detector, load

    check_opset(opset)  # before the model is read
    det = load(weights, device="cpu", precision="fp32", max_pixels=max_pixels)
    if not isinstance(det, Detector):
        raise UsageError(f"{weights}: already an exported graph; export a checkpoint or run folder")
    options.setdefault("tiling", det.tiling)  # trained on tiles: in the metadata
    if options.get("post") is None or options["post"].score_threshold is None:
        options.setdefault("score_threshold", det.score_threshold)  # the model's own
    post = options.get("post")
    if options.get("box_vote") is None and (post is None or post.box_vote is None):
        options["box_vote"] = det.default_post.box_vote  # the model's own: COCO's detectors 0
    if int8:
        return _export_int8(det, weights, out, opset, calibration, calibration_images, options)
    return export_model(det.model, det.classes, out, opset=opset, **options)


def _export_int8(
    det: Detector,
    weights: str | Path,
    out: str | Path,
    opset: int,
    calibration: str | Path | None,
    count: int,
    options: dict[str, Any],
) -> Path:
    """The fp32 graph written to a temporary file, quantized into ``out``."""
    import tempfile

    from .quantize import calibration_images, quantize_graph

    if not options.get("nms", True):
        raise UsageError("--int8 --no-nms: the int8 graph is exported with NMS")
    files, source = calibration_images(weights, calibration, count)  # fails early, in one line
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tinyssd-int8-") as folder:
        fp32 = export_model(det.model, det.classes, Path(folder) / "fp32.onnx", opset, **options)
        with atomic_path(out) as tmp:
            quantize_graph(fp32, tmp, files, source)
    return out
