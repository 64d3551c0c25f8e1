"""Settings as small frozen dataclasses, torch-free so that ``tinyssd --help`` stays fast.

Each field is declared with :func:`option`: its default, the help text its
command-line option shows and, where it has them, the values it may take.
``cli.py`` generates every command's options from these fields.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any

from .errors import UsageError


def option(default: Any, help: str, choices: tuple | None = None, **extra: Any) -> Any:
    """A dataclass field with the help text and choices its CLI option shows.

    ``default=MISSING``: a required option (or argument). ``extra`` keys the
    parser reads: ``flag`` (the option's name when not the field's),
    ``positional`` (an argument, not an option), ``nargs`` and ``const``, ``positive`` (an
    integer > 0, checked by :func:`check_options`), ``only`` (of a nested settings
    dataclass: the fields offered as options).
    """
    meta = {"help": help, "choices": choices, **extra}
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The CLI option of a field: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def field_flag(f: Field) -> str:
    """The option a field is given as, without ``--`` (its ``flag``, else its name)."""
    return f.metadata.get("flag") or flag(f.name)


def check_options(settings: Any) -> None:
    """UsageError naming the option, for a value no command can use: a float that is NaN
    or infinite (``--lr nan``), or a ``positive`` field that is not > 0 (``--max-pixels 0``).

    ``settings``: an instance of any settings dataclass; nested ones are checked too.
    """
    for f in fields(settings):
        value = getattr(settings, f.name)
        if is_dataclass(value):
            check_options(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"--{field_flag(f)} {value}: must be a finite number")
        elif f.metadata.get("positive") and value is not None and not value > 0:
            raise UsageError(f"--{field_flag(f)} {value}: must be > 0")


# Names that options take, listed once (the modules that implement them check against these).
FORMAT_NAMES = ("bananas", "voc", "coco", "yolo")  # data layouts, in detection order
DEVICES = ("auto", "cpu", "cuda", "mps")  # mps: Apple GPUs; auto takes cuda, then mps
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("cosine", "step", "constant")  # learning-rate decay over the steps
ASSIGNERS = ("max_iou", "atss")  # which anchors learn a box (matching.anchor_targets)
# --model: the keys of models.PRESETS, listed torch-free for --help (a test keeps them equal)
MODEL_NAMES = (
    "tiny_ssd",
    "ssd300_vgg16",
    "tiny_fpn",
    "tiny_fpn_p2",
    "ssdlite320_mobilenet_v3_large",
    "ssd_resnet18",
    "ssd_resnet50",
)

# Score a box needs to be reported, drawn or printed (predict, serve, video, pictures)
# when the checkpoint stores no threshold of its own.
DEFAULT_THRESHOLD = 0.5
# Score a candidate needs to be scored by mAP (eval and the val AP after each epoch).
EVAL_SCORE_THRESHOLD = 0.01
# Score voting's sigma when the model sets none (PostprocessConfig.box_vote, postprocess.
# vote_boxes). bench/box_vote.py, AP / AP75 without -> with 0.05 (one run each, last weights):
# BCCD val 0.508 / 0.540 -> 0.521 / 0.570, BCCD test 0.510 / 0.560 -> 0.531 / 0.602, bananas
# 0.888 -> 0.897, make demo's set 0.737 -> 0.753 (0.025 and 0.1 did less)
DEFAULT_BOX_VOTE = 0.05


@dataclass(frozen=True)
class PostprocessConfig:
    """From scores and boxes to detections: the one home of these knobs, used by predict,
    eval, video, serve and the ONNX export alike."""

    score_threshold: float | None = option(
        None,
        "score a box needs to be reported and drawn; default: the model's own (the F1-optimal "
        f"threshold on val, stored at training), else {DEFAULT_THRESHOLD}",
        flag="threshold",
    )
    nms_threshold: float = option(0.45, "IoU above which NMS removes the lower-scored box")
    topk_candidates: int = option(400, "(anchor, class) pairs per image that go into NMS")
    max_detections: int = option(200, "detections kept per image, the best ones")
    class_agnostic: bool = option(False, "NMS across classes (one box per place)")
    box_vote: float | None = option(
        None,
        "score voting (tighter boxes): each kept box becomes the mean of the candidates of "
        "its class that overlap it, weighted by score x exp(-(1 - IoU)^2 / this); 0: off; "
        f"default: the model's own ({DEFAULT_BOX_VOTE}; 0 for COCO's detectors and graphs "
        "exported before voting)",
    )

    def __post_init__(self) -> None:
        flags = {f.name: field_flag(f) for f in fields(self)}
        for name in ("score_threshold", "nms_threshold", "box_vote"):
            value = getattr(self, name)
            if value is None and name in ("score_threshold", "box_vote"):
                continue  # the model's own, resolved by the predictor
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise UsageError(f"--{flags[name]} {value!r}: must be in [0, 1]")
        for name in ("topk_candidates", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"--{flags[name]} {value!r}: must be > 0")


# ---------------------------------------------------------------------------- the commands
# One frozen dataclass per command (``train``'s is ``config.TrainConfig``): ``cli.py``
# generates the options from the fields, parses, and calls the API with the dataclass.
# Fields without a default (``MISSING``) are required; a field whose type is a dataclass
# (``PostprocessConfig``, ``LimitsOptions``) offers its own fields as options.

DEFAULT_MAX_UPLOAD_MB = 20.0  # tinyssd serve: larger uploads are refused with 413
DEFAULT_CALIBRATION_IMAGES = 200  # tinyssd export --int8: images its ranges are measured on
DEMO_EPOCHS = 24  # tinyssd demo / make demo: about 2.5 minutes of training on 2 cores
FORMAT_CHOICES = ("auto", *FORMAT_NAMES)  # --format: "auto" detects the layout


@dataclass(frozen=True)
class LimitsOptions:
    """``--max-pixels`` / ``--max-boxes`` as given; ``data.limits.DataLimits.from_env`` fills
    the rest from the environment (the defaults below are ``DataLimits``'s, test-checked)."""

    max_pixels: int | None = option(
        None,
        "images with more pixels are skipped, checked from the header "
        "(default: 64000000, or $TINYSSD_MAX_PIXELS)",
        positive=True,
    )
    max_boxes: int | None = option(
        None,
        "boxes kept per image, the first ones (default: 500, or $TINYSSD_MAX_BOXES)",
        positive=True,
    )


_WEIGHTS_HELP = "run folder or checkpoint file"


@dataclass(frozen=True)
class TrainOptions:
    """What ``tinyssd train`` takes besides ``TrainConfig``'s fields."""

    config: str | None = option(
        None, "a run's config.json (or run folder): repeat that run's settings (default: none)"
    )
    limits: LimitsOptions = option(LimitsOptions(), "input limits")


@dataclass(frozen=True)
class PredictOptions:
    """``tinyssd predict``: images, folders, videos, cameras or streams."""

    inputs: tuple[str, ...] = option(
        MISSING,
        "image files or folders, videos (.mp4 .avi .mov .mkv .webm), a camera index (0) "
        "or a stream URL (rtsp:// http://)",
        positional=True,
        nargs="+",
    )
    weights: str = option(
        MISSING, f"{_WEIGHTS_HELP}, an exported .onnx graph, or coco:NAME (torchvision's COCO SSD)"
    )
    post: PostprocessConfig = option(PostprocessConfig(), "post-processing")
    out: str | None = option(
        None,
        "folder for the drawn pictures (default: the first free runs/predict, runs/predict2, ...)",
    )
    backend: str = option(
        "torch",
        "run the network in PyTorch or through onnxruntime (a .onnx --weights is onnx)",
        choices=("torch", "onnx"),
    )
    max_frames: int | None = option(
        None, "stop a video, camera or stream after this many frames (default: all)", positive=True
    )
    device: str = option("auto", "where to run the network", choices=DEVICES)
    precision: str = option(
        "auto",
        "bf16 autocast for the network; auto = bf16 where the hardware has it",
        choices=PRECISIONS,
    )
    limits: LimitsOptions = option(LimitsOptions(), "input limits")


@dataclass(frozen=True)
class ServeOptions:
    """``tinyssd serve``: an HTTP API and a page."""

    weights: str = option(MISSING, _WEIGHTS_HELP)
    host: str = option("127.0.0.1", "address to listen on")
    port: int = option(8000, "0: any free port")
    device: str = option("auto", "where to run the network", choices=DEVICES)
    precision: str = option(
        "auto",
        "bf16 autocast for the network; auto = bf16 where the hardware has it",
        choices=PRECISIONS,
    )
    post: PostprocessConfig = option(
        PostprocessConfig(), "post-processing; a request may pass ?threshold="
    )
    max_upload_mb: float = option(DEFAULT_MAX_UPLOAD_MB, "larger uploads are refused with 413")
    max_batch: int = option(
        8,
        "requests that arrive together are predicted as one batch of up to this many",
        positive=True,
    )
    batch_wait_ms: float = option(
        2.0, "how long a request waits for others to join its batch (0: never waits)"
    )
    limits: LimitsOptions = option(LimitsOptions(), "input limits", only=("max_pixels",))


@dataclass(frozen=True)
class EvalOptions:
    """``tinyssd eval``: VOC and COCO mAP of a trained detector."""

    weights: str = option(MISSING, _WEIGHTS_HELP)
    data: str = option(MISSING, "data folder")
    split: str = option("val", "the split to evaluate on")
    format: str = option("auto", "data layout", choices=FORMAT_CHOICES)
    json: str | None = option(None, "write the metrics dict here (default: none)")
    out: str | None = option(
        None,
        "folder for the report: results.json, val_predictions.png, confusion_matrix.png, "
        "P_curve.png, R_curve.png, F1_curve.png, PR_curve.png (default: the first free "
        "runs/eval, runs/eval2, ...)",
    )
    classes_map: str | None = option(
        None,
        "DATA=MODEL,...: pair the data's class names with the model's where they differ "
        "(default: they must match)",
    )
    force: bool = option(
        False, "score data whose class names differ from the model's by position (a warning)"
    )
    limits: LimitsOptions = option(LimitsOptions(), "input limits")


@dataclass(frozen=True)
class ExportOptions:
    """``tinyssd export``: a trained detector as an ONNX graph."""

    weights: str = option(MISSING, _WEIGHTS_HELP)
    out: str = option(MISSING, "the .onnx file to write")
    opset: int = option(17, "ONNX opset, 17 to 20")
    nms: bool = option(
        True, "decoding and per-class NMS in the graph; --no-nms: raw boxes and scores"
    )
    max_detections: int = option(PostprocessConfig.max_detections, "rows per image")
    topk_candidates: int = option(
        PostprocessConfig.topk_candidates, "(anchor, class) pairs into NMS"
    )
    box_vote: float | None = option(
        None,
        "score voting's sigma, fixed in the graph (0: off); default: the model's own "
        f"({DEFAULT_BOX_VOTE}; 0 for COCO's detectors)",
    )
    input_dtype: str = option(
        "uint8",
        "the graph's image type: uint8, or float32 0-255 values",
        choices=("uint8", "float32"),
    )
    int8: bool = option(
        False, "quantize the backbone to int8 (static; tinyssd eval shows the cost)"
    )
    calibration: str | None = option(
        None,
        "with --int8: images to calibrate on, a run folder, data folder or image folder "
        "(default: the run's own training images)",
    )
    calibration_images: int = option(
        DEFAULT_CALIBRATION_IMAGES, "with --int8: images calibrated on", positive=True
    )
    overwrite: bool = option(False, "replace an existing --out file")
    limits: LimitsOptions = option(LimitsOptions(), "input limits", only=("max_pixels",))


@dataclass(frozen=True)
class DownloadOptions:
    """``tinyssd data download``."""

    name: str = option(MISSING, "the data set", choices=("bananas",), positional=True)
    to: str = option(MISSING, "folder to download and extract into")


@dataclass(frozen=True)
class SynthOptions:
    """``tinyssd data synth``: the procedural data set."""

    out_dir: str = option(MISSING, "folder to write it into", positional=True)
    train: int = option(1000, "training images")
    val: int = option(100, "val images")
    classes: int = option(3, "object classes, 1..6")
    seed: int = option(0, "images depend only on (seed, split, index)")
    size: int = option(256, "image side in pixels")


@dataclass(frozen=True)
class CheckOptions:
    """``tinyssd data check``: the problems of a data set, and how well anchors fit it."""

    dir: str = option(MISSING, "data folder", positional=True)
    format: str = option("auto", "data layout", choices=FORMAT_CHOICES)
    first: int = option(3, "files listed per problem kind")
    model: str | None = option(
        None, "also report how well this model's anchors fit the boxes (default: none)"
    )
    image_size: int | None = option(None, "with --model: its input side (default: the model's own)")
    plots: bool = option(
        False,
        "draw labels.png (boxes per class, their sizes and centres) and, with --model, each "
        "level's anchors and those matched to each box on a few training images, into the "
        "first free runs/check, runs/check2, ...",
    )
    limits: LimitsOptions = option(LimitsOptions(), "input limits")


@dataclass(frozen=True)
class ConvertOptions:
    """``tinyssd data convert``."""

    src: str = option(MISSING, "data folder to read", positional=True)
    to: str = option(MISSING, "the format to write", choices=FORMAT_NAMES)
    out: str = option(MISSING, "folder to write", positional=True)
    format: str = option("auto", "data layout of SRC", choices=FORMAT_CHOICES)
    limits: LimitsOptions = option(LimitsOptions(), "input limits")


@dataclass(frozen=True)
class BenchOptions:
    """``tinyssd bench``."""

    quick: bool = option(False, "fewer steps: a rough figure in seconds")


@dataclass(frozen=True)
class DemoOptions:
    """``tinyssd demo`` (what ``make demo`` runs)."""

    out: str = option("runs/demo", "folder of the run and its pictures")
    epochs: int = option(DEMO_EPOCHS, "epochs to train")
    data: str | None = option(None, "banana-layout folder (default: the built-in synthetic set)")
