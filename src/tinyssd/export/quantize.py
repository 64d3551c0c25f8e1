"""int8 graphs: static post-training quantization of an export, with onnxruntime's tools.

    tinyssd export --weights runs/bananas --out bananas-int8.onnx --int8
    tinyssd export --weights runs/bananas --out m.onnx --int8 --calibration photos/

``quantize_graph`` takes a graph written by ``export_model`` (with NMS) and writes
its int8 twin: QDQ format (QuantizeLinear/DequantizeLinear pairs that
onnxruntime fuses into int8 kernels), weights int8 per output channel,
activations uint8 with ranges calibrated (min-max) on real images resized as the
predictors resize them. uint8 activations x int8 weights is the pair
onnxruntime's x86 kernels fuse: with int8 activations most convolutions stay
unfused, in fp32 between a DequantizeLinear and a QuantizeLinear, and the graph
runs slower than the fp32 one.

Only the network is quantized: the backbone's convolutions (and the pooling,
additions and resizes between them) and the prediction heads' convolutions
hold nearly all the FLOPs. The box decoding, softmax, top-k and NMS stay fp32:
the quantizer is given the network's nodes only (their names start with
``/model/backbone/``, ``/model/cls_heads`` or ``/model/bbox_heads``, the torch
module paths). The heads' outputs (logits and box offsets) are rounded to 256
levels each before the fp32 part; on BCCD that lost nothing (val AP 0.491 as
fp32, AP75 0.481 vs 0.470) and took the single-image time from 1.81x to 1.98x
faster than onnxruntime fp32 (Intel Xeon, AVX-512 VNNI, 2 cores; heads left in
fp32 took a quarter of the int8 graph's time). The inputs, outputs and
metadata are the fp32 graph's, plus ``quantization`` (what was done, on which
images).

Calibration images (``calibration_images``): by default the training split of
the run the weights come from (its ``config.json`` names the data folder and
format); ``--calibration`` takes another run folder, a data folder (its train
split) or any folder of images (all of them, recursively); N of them, evenly
spaced, are used.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, UsageError
from ..extras import require
from ..options import DEFAULT_CALIBRATION_IMAGES

log = logging.getLogger("tinyssd")

# Ops of the network that get int8 inputs and outputs; Relu/Clip after a Conv are fused
# into it. Reshapes and concatenations are left in fp32.
QUANTIZED_OPS = (
    "Conv",
    "MatMul",
    "Gemm",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Resize",
    "Relu",
    "Clip",
)
# torch.onnx names nodes by module path: the backbone and the heads of models.ssd.SSD
NETWORK_SCOPES = ("/model/backbone/", "/model/cls_heads", "/model/bbox_heads")
_CALIBRATION_BATCH = 8  # images per calibration run


def calibration_images(
    weights: str | Path,
    calibration: str | Path | None = None,
    count: int = DEFAULT_CALIBRATION_IMAGES,
) -> tuple[list[Path], str]:
    """``count`` image files to calibrate on, evenly spaced, and where they come from.

    ``calibration`` None: the training split of the run ``weights`` belongs to;
    else a run folder (its training split), a data folder in a known layout (its
    train split) or any folder of images. DataError (one line) when there is no
    image; UsageError when ``weights`` has no run config and ``calibration`` is None.
    """
    if count <= 0:
        raise UsageError(f"--calibration-images {count}: must be > 0")
    if calibration is None:
        run = _run_folder(weights)
        if run is None:
            raise UsageError(
                f"--int8: {weights} has no config.json beside it naming its training data; "
                "pass --calibration DIR (a folder of images like the ones it will see)"
            )
        files, source = _training_images(run), f"the training images of {run}"
    else:
        folder = Path(calibration)
        if not folder.is_dir():
            raise DataError(f"--calibration {folder}: no such folder")
        if (folder / "config.json").is_file():
            files, source = _training_images(folder), f"the training images of {folder}"
        else:
            files, source = _folder_images(folder)
    if not files:
        raise DataError(f"--calibration {calibration or weights}: no images to calibrate on")
    step = len(files) / min(count, len(files))
    chosen = [files[int(i * step)] for i in range(min(count, len(files)))]
    return chosen, f"{len(chosen)} images of {source}"


def _run_folder(weights: str | Path) -> Path | None:
    path = Path(weights)
    folder = path if path.is_dir() else path.parent
    return folder if (folder / "config.json").is_file() else None


def _training_images(run: Path) -> list[Path]:
    from ..config import read_run_config
    from ..data import load_split

    train = read_run_config(run)
    if "data" not in train:
        raise UsageError(f"{run}/config.json: names no data folder; pass --calibration DIR")
    split = load_split(train["data"], "train", train.get("format", "auto"))
    return [record.image for record in split.records]


def _folder_images(folder: Path) -> tuple[list[Path], str]:
    from ..data import detect_format, load_split
    from ..data.base import IMAGE_SUFFIXES

    try:
        layout = detect_format(folder)
    except DataError:  # not a data set: any images in it
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        return [f for f in files if f.is_file()], f"{folder}"
    split = load_split(folder, "train", layout)
    return [record.image for record in split.records], f"the train split of {folder}"


def _feeds(files: Sequence[Path], image_size: int, input_dtype: type) -> Iterator[dict]:
    """The graph's feeds, a few images at a time, resized as ``OnnxDetector`` resizes them
    (``predict.base.input_batch``)."""
    from ..predict.base import input_batch

    for start in range(0, len(files), _CALIBRATION_BATCH):
        batch, _ = input_batch(list(files[start : start + _CALIBRATION_BATCH]), image_size)
        yield {
            "images": batch.numpy().astype(input_dtype, copy=False),
            # any thresholds: only the network's activations are measured
            "score_threshold": np.array(0.5, np.float32),
            "iou_threshold": np.array(0.45, np.float32),
        }


def quantize_graph(fp32: str | Path, out: str | Path, files: Sequence[Path], source: str) -> Path:
    """Write ``out``: the int8 (QDQ) twin of ``fp32`` (an ``export_model`` graph with NMS),
    calibrated on the image ``files``; ``source`` says what they are, in its metadata."""
    onnx = require("onnx", "onnx")
    require("onnxruntime", "onnx")  # a one-line error naming the extra where it is missing
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class ImageReader(CalibrationDataReader):
        def __init__(self, feeds: Iterator[dict]) -> None:
            self.feeds = feeds

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    proto = onnx.load(str(fp32))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("nms") != "true":
        raise UsageError("--int8: export with NMS (without --no-nms)")
    network = [n for n in proto.graph.node if n.name.startswith(NETWORK_SCOPES)]
    if not any(n.op_type in ("Conv", "MatMul", "Gemm") for n in network):
        raise UsageError(f"--int8: {fp32} has no {NETWORK_SCOPES[0]} nodes to quantize")
    dtype = (
        np.uint8
        if proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        else np.float32
    )
    reader = ImageReader(_feeds(files, int(meta["image_size"]), dtype))
    log.info("calibrating int8 ranges on %s", source)
    with _quiet_root_logger():  # its advice to run onnxruntime's pre-processing is not for users
        quantize_static(
            proto,
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            nodes_to_quantize=[n.name for n in network],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    meta["quantization"] = (
        "int8 qdq per-channel (uint8 activations, int8 weights; the network: "
        f"decoding and NMS in fp32), min-max calibrated on {source}"
    )
    return _set_metadata(out, meta)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs through the root logger: its warnings are held back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _set_metadata(path: str | Path, meta: dict[str, str]) -> Path:
    """Replace ``path``'s metadata_props by ``meta``."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return Path(path)


__all__ = ["calibration_images", "quantize_graph"]
