"""The ``tinyssd`` command: argument parsing only; every command calls the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .errors import TinySSDError, UsageError


def _train(a: argparse.Namespace) -> None:
    from .engine.train import train

    train(**train_overrides(a))


def train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields a ``tinyssd train`` command line sets: ``--config``'s, then
    the options given explicitly (options not given are absent from the namespace)."""
    from .config import TrainConfig, read_run_config

    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name)}
    if getattr(a, "config", None):
        saved = read_run_config(a.config)
        base = {k: v for k, v in saved.items() if k not in ("out", "resume", "exist_ok", "force")}
        given = {**TrainConfig.from_dict(base).to_dict(), **given}
    return given


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, help and choices from the field; defaults shown
    in the help but not set, so that only what the user typed overrides a recipe,
    ``--config`` or a resumed run's settings."""
    from .config import RECIPES, TrainConfig, field_types, flag

    types = field_types()
    for f in fields(TrainConfig):
        meta = f.metadata
        name = f"--{flag(f.name)}"
        shown = f.default if f.default is not None else "from --recipe"
        if f.name in RECIPES["default"]:
            shown = f"{RECIPES['default'][f.name]} (chapter recipe: {RECIPES['chapter'][f.name]})"
        elif f.default is None:
            shown = "none"
        help_text = (
            meta["help"] if "default:" in meta["help"] else f"{meta['help']} (default: {shown})"
        )
        if types[f.name] is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(
                name, type=types[f.name], choices=meta.get("choices"), help=help_text
            )
    parser.add_argument(
        "--config", help="a run's config.json (or run folder): repeat that run's settings"
    )


def _predict(a: argparse.Namespace) -> None:
    from .api import load, predict_files
    from .video import is_video_source, predict_video

    weights = a.weights
    if a.backend == "onnx" and not str(weights).lower().endswith(".onnx"):
        weights = _exported_copy(weights)
    det = load(weights, device=a.device, precision=a.precision)
    images = [s for s in a.inputs if not is_video_source(s)]
    skipped: list[str] = []
    if images:
        for line in predict_files(det, images, threshold=a.threshold, out=a.out, skipped=skipped):
            print(json.dumps(line), flush=True)
    for source in (s for s in a.inputs if is_video_source(s)):
        for line in predict_video(det, source, a.out, a.threshold, max_frames=a.max_frames):
            print(json.dumps(line), flush=True)
    if skipped:
        raise SkippedInputs(f"{len(skipped)} unreadable image(s) skipped (listed above)")


def _serve(a: argparse.Namespace) -> None:
    from .serve import serve

    serve(
        a.weights,
        host=a.host,
        port=a.port,
        device=a.device,
        precision=a.precision,
        threshold=a.threshold,
        max_upload_mb=a.max_upload_mb,
        max_pixels=getattr(a, "max_pixels", None),
    )


def _exported_copy(weights: str) -> str:
    """``--backend onnx`` with a checkpoint: export it to a temporary .onnx first."""
    import atexit
    import shutil
    import tempfile

    from .export.onnx import export_onnx

    folder = tempfile.mkdtemp(prefix="tinyssd-onnx-")
    atexit.register(shutil.rmtree, folder, True)
    return str(export_onnx(weights, f"{folder}/model.onnx"))


class SkippedInputs(Exception):
    """Some inputs could not be used; the rest were processed (exit code 1)."""


def _eval(a: argparse.Namespace) -> None:
    from .api import evaluate_run

    evaluate_run(a.weights, a.data, split=a.split, format=a.format, json_out=a.json, out=a.out)


def _data_download(a: argparse.Namespace) -> None:
    from .data.download import download_bananas

    print(download_bananas(a.to))


def _data_synth(a: argparse.Namespace) -> None:
    from .data.synthetic import make_synthetic

    root = make_synthetic(
        a.out_dir, train=a.train, val=a.val, classes=a.classes, seed=a.seed, size=a.size
    )
    print(root)


def _data_check(a: argparse.Namespace) -> None:
    from .data.check import check_dataset

    report = check_dataset(a.dir, format=a.format)
    print(report.summary(first=a.first))
    if a.model:
        print(anchor_fit_summary(a.dir, a.format, a.model, a.image_size))


def anchor_fit_summary(root: str, format: str, model: str, image_size: int | None) -> str:
    """How well a model's anchors fit the training boxes, before and after ``--anchors auto``."""
    from dataclasses import replace

    from .data import load_split
    from .engine.inputs import normalised_boxes
    from .models import PRESETS
    from .models.anchor_fit import fit_anchors, miss_rate

    if model not in PRESETS:
        raise UsageError(f"--model {model!r}: choose from {', '.join(PRESETS)}")
    config = PRESETS[model]()
    config = replace(config, image_size=image_size or config.image_size)
    boxes = normalised_boxes(load_split(root, "train", format))
    if len(boxes) < 2:
        return f"anchors of {model}: fewer than 2 training boxes to fit"
    fitted = fit_anchors(config, boxes[:, 2:] - boxes[:, :2])
    return (
        f"anchors of {model} at {config.image_size} px: {100 * miss_rate(config, boxes):.1f}% of "
        f"{len(boxes)} training boxes have no anchor with IoU >= 0.5; fitted to the data "
        f"(--anchors auto): {100 * miss_rate(fitted, boxes):.1f}%"
    )


def _data_convert(a: argparse.Namespace) -> None:
    from .data.convert import convert

    print(convert(a.src, to=a.to, out=a.out, format=a.format))


def _export(a: argparse.Namespace) -> None:
    from .export.onnx import export_onnx

    out = Path(a.out)
    if out.exists() and not a.overwrite:
        raise UsageError(f"--out {out}: file exists (pass --overwrite to replace it)")
    path = export_onnx(
        a.weights,
        out,
        opset=a.opset,
        nms=a.nms,
        topk_candidates=a.topk_candidates,
        max_detections=a.max_detections,
        input_dtype=a.input_dtype,
    )
    print(path)


def _bench(a: argparse.Namespace) -> None:
    from .engine.benchmark import run_benchmarks

    print(json.dumps(run_benchmarks(quick=a.quick), indent=1))


def _demo(a: argparse.Namespace) -> None:
    from .api import demo

    demo(out=a.out, epochs=a.epochs, data=a.data)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinyssd")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value}: must be > 0")
    return value


def data_limits_parser() -> argparse.ArgumentParser:
    """``--max-pixels`` and ``--max-boxes``: the input limits of every command that reads data."""
    from .data.base import MAX_IMAGE_PIXELS
    from .data.rules import MAX_BOXES_PER_IMAGE

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help=f"images with more pixels are skipped, checked from the header "
        f"(default: {MAX_IMAGE_PIXELS}, or $TINYSSD_MAX_PIXELS)",
    )
    p.add_argument(
        "--max-boxes",
        type=_positive_int,
        default=argparse.SUPPRESS,
        help=f"boxes kept per image, the first ones (default: {MAX_BOXES_PER_IMAGE}, "
        "or $TINYSSD_MAX_BOXES)",
    )
    return p


def apply_data_limits(a: argparse.Namespace) -> None:
    """The limits given on the command line, for every reader and loader worker (environment)."""
    for option, variable in (
        ("max_pixels", "TINYSSD_MAX_PIXELS"),
        ("max_boxes", "TINYSSD_MAX_BOXES"),
    ):
        if hasattr(a, option):
            os.environ[variable] = str(getattr(a, option))


def build_parser() -> argparse.ArgumentParser:
    from .inference import DEFAULT_THRESHOLD
    from .serve import DEFAULT_MAX_UPLOAD_MB

    p = argparse.ArgumentParser(prog="tinyssd", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"tinyssd {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    limits = data_limits_parser()
    fmt: dict[str, Any] = dict(default="auto", choices=["auto", "bananas", "voc", "coco", "yolo"])

    t = sub.add_parser(
        "train", help="train a detector", argument_default=argparse.SUPPRESS, parents=[limits]
    )
    add_train_options(t)
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="draw and print detections for images", parents=[limits])
    pr.add_argument(
        "inputs",
        nargs="+",
        help="image files or folders, videos (.mp4 .avi .mov .mkv .webm), a camera index (0) "
        "or a stream URL (rtsp:// http://)",
    )
    pr.add_argument("--weights", required=True, help="run folder or checkpoint file")
    pr.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="score a box needs to be printed and drawn (default: %(default)s)",
    )
    pr.add_argument("--out", default="predictions", help="folder for the drawn pictures")
    pr.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnx"],
        help="run the network in PyTorch or through onnxruntime (a .onnx --weights is onnx)",
    )
    pr.add_argument(
        "--max-frames", type=int, help="stop a video, camera or stream after this many frames"
    )
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="bf16 autocast for the network; auto = bf16 where the hardware has it",
    )
    pr.set_defaults(func=_predict)

    sv = sub.add_parser("serve", help="serve a detector over HTTP: an API and a page")
    sv.add_argument("--weights", required=True, help="run folder or checkpoint file")
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    sv.add_argument(
        "--port", type=int, default=8000, help="0: any free port (default: %(default)s)"
    )
    sv.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    sv.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    sv.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="default score threshold; a request may pass ?threshold= (default: %(default)s)",
    )
    sv.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="larger uploads are refused with 413 (default: %(default)s)",
    )
    sv.add_argument(
        "--max-pixels",
        type=int,
        default=argparse.SUPPRESS,
        help="larger images are refused with 413 (default: $TINYSSD_MAX_PIXELS or 64000000)",
    )
    sv.set_defaults(func=_serve)

    e = sub.add_parser("eval", help="VOC and COCO mAP of a trained detector", parents=[limits])
    e.add_argument("--weights", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--format", **fmt)
    e.add_argument("--json", help="write the metrics dict here")
    e.add_argument("--out", default=".", help="folder for pr_curve.png")
    e.set_defaults(func=_eval)

    d = sub.add_parser("data", help="download, synthesise, check and convert data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download a data set")
    dl.add_argument("name", choices=["bananas"])
    dl.add_argument("--to", required=True)
    dl.set_defaults(func=_data_download)
    sy = dsub.add_parser("synth", help="write the procedural data set")
    sy.add_argument("out_dir")
    sy.add_argument("--train", type=int, default=1000)
    sy.add_argument("--val", type=int, default=100)
    sy.add_argument("--classes", type=int, default=3)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--size", type=int, default=256, help="image side in pixels")
    sy.set_defaults(func=_data_synth)
    ch = dsub.add_parser("check", help="report problems in a data set", parents=[limits])
    ch.add_argument("dir")
    ch.add_argument("--format", **fmt)
    ch.add_argument("--first", type=int, default=3, help="files listed per problem kind")
    ch.add_argument("--model", help="also report how well this model's anchors fit the boxes")
    ch.add_argument(
        "--image-size", type=int, help="with --model: its input side (default: its own)"
    )
    ch.set_defaults(func=_data_check)
    cv = dsub.add_parser("convert", help="convert a data set to another format", parents=[limits])
    cv.add_argument("src")
    cv.add_argument("--to", required=True, choices=["voc", "coco", "yolo", "bananas"])
    cv.add_argument("out")
    cv.add_argument("--format", **fmt)
    cv.set_defaults(func=_data_convert)

    x = sub.add_parser("export", help="export a trained detector to ONNX")
    x.add_argument("--weights", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default: 17)")
    x.add_argument(
        "--nms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decoding and per-class NMS in the graph; --no-nms: raw boxes and scores",
    )
    x.add_argument("--max-detections", type=int, default=200, help="rows per image (200)")
    x.add_argument(
        "--topk-candidates", type=int, default=400, help="(anchor, class) pairs into NMS (400)"
    )
    x.add_argument(
        "--input-dtype",
        default="uint8",
        choices=["uint8", "float32"],
        help="the graph's image type: uint8, or float32 0-255 values (default: uint8)",
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    x.set_defaults(func=_export)

    b = sub.add_parser("bench", help="measure training and prediction speed on this machine")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(func=_bench)

    m = sub.add_parser("demo", help="synthesise data, train briefly, predict, show pictures")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--data", help="banana-layout folder; default: the built-in synthetic set")
    m.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    apply_data_limits(a)
    try:
        a.func(a)
    except TinySSDError as e:
        print(f"tinyssd: error: {e}", file=sys.stderr)
        return 2
    except SkippedInputs as e:
        print(f"tinyssd: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader of our output went away (`tinyssd predict ... | head -1`): end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:  # permissions, a full disk, a read-only folder: name the path
        where = e.filename if e.filename is not None else "tinyssd"
        print(f"tinyssd: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinyssd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
