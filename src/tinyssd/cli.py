"""The ``tinyssd`` command: argument parsing only; every command calls the Python API.

Each command's options are generated from frozen dataclasses (``config.TrainConfig``
and those of ``options``): a field is one option (its name with ``-`` for ``_``, or
its ``flag``), with the field's default, help text and choices. A field whose type
is a dataclass (``PostprocessConfig``, ``LimitsOptions``) offers that dataclass's
fields as options. Building the parser imports no torch, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from .config import RECIPES, TrainConfig, read_config_file
from .errors import TinySSDError, UsageError
from .options import (
    BenchOptions,
    CheckOptions,
    ConvertOptions,
    DemoOptions,
    DownloadOptions,
    EvalOptions,
    ExportOptions,
    LimitsOptions,
    PredictOptions,
    ServeOptions,
    SynthOptions,
    TrainOptions,
    check_options,
    field_flag,
)

if TYPE_CHECKING:
    from .data.limits import DataLimits

T = TypeVar("T")

# ---------------------------------------------------------------------------- options from fields


def _value_type(hint: Any) -> Any:
    """The type a field's strings parse to: ``int | None`` -> int, ``tuple[str, ...]`` -> str."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0] if args else hint


def _dest(f: Field) -> str:
    return f.name if f.metadata.get("positional") else field_flag(f).replace("-", "_")


def _help(f: Field, default: Any, recipes: dict[str, dict[str, Any]] | None) -> str:
    """The field's help with its default, which for a recipe field is each recipe's."""
    text = f.metadata["help"]
    if "default:" in text or default is MISSING or f.metadata.get("positional"):
        return text
    if recipes is not None and f.name in recipes["default"]:
        shown = f"{recipes['default'][f.name]} (chapter recipe: {recipes['chapter'][f.name]})"
    else:
        shown = "none" if default is None else default
    return f"{text} (default: {shown})"


def add_options(
    parser: argparse.ArgumentParser,
    cls: type,
    base: Any = None,
    only: tuple[str, ...] | None = None,
    recipes: dict[str, dict[str, Any]] | None = None,
    set_defaults: bool = True,
) -> None:
    """One argument per field of the dataclass ``cls`` (defaults from ``base``, an instance,
    else the fields'); ``set_defaults=False`` leaves options not given out of the namespace."""
    hints = typing.get_type_hints(cls)
    defaults = {}
    for f in fields(cls):
        if only is not None and f.name not in only:
            continue
        default = getattr(base, f.name) if base is not None else f.default
        kind = _value_type(hints[f.name])
        if is_dataclass(kind):
            nested = f.metadata.get("only")
            add_options(parser, kind, default, nested, None, set_defaults)  # type: ignore[arg-type]
            continue
        meta = f.metadata
        kwargs: dict[str, Any] = {"help": _help(f, default, recipes)}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind  # values are checked once parsed: see from_namespace
            kwargs["choices"] = meta.get("choices")
        if meta.get("positional"):
            parser.add_argument(f.name, nargs=meta.get("nargs"), **kwargs)
        else:
            kwargs["required"] = default is MISSING
            # nargs="?" with const: the option alone means const (--pretrained = imagenet)
            kwargs.update({k: meta[k] for k in ("nargs", "const") if k in meta})
            parser.add_argument(f"--{field_flag(f)}", dest=_dest(f), **kwargs)
        if default is not MISSING:
            defaults[_dest(f)] = default
    if set_defaults:  # set here, not in add_argument: argparse would add "(default: ...)" again
        parser.set_defaults(**defaults)


def from_namespace(cls: type[T], a: argparse.Namespace, base: Any = None) -> T:
    """The dataclass ``cls`` of the options parsed into ``a`` (fields not there: defaults),
    checked by ``options.check_options``: a NaN, an infinity or a ``positive`` option <= 0
    is a one-line UsageError naming the option (an argparse type error would print the
    whole usage first)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        kind = _value_type(hints[f.name])
        if is_dataclass(kind):
            values[f.name] = from_namespace(kind, a, f.default)  # type: ignore[arg-type]
        elif hasattr(a, _dest(f)):
            value = getattr(a, _dest(f))
            values[f.name] = tuple(value) if isinstance(value, list) else value
    settings = replace(base, **values) if base is not None else cls(**values)
    check_options(settings)
    return settings


# ---------------------------------------------------------------------------- the commands


def data_limits(o: LimitsOptions) -> DataLimits:
    """The limits given, else ``$TINYSSD_MAX_PIXELS`` / ``$TINYSSD_MAX_BOXES``, else defaults."""
    from .data.limits import DataLimits

    return DataLimits.from_env(max_pixels=o.max_pixels, max_boxes=o.max_boxes)


def train_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields a ``tinyssd train`` command line sets: ``--config``'s, then
    the options given explicitly (options not given are absent from the namespace)."""
    given = {f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name)}
    if getattr(a, "config", None):
        saved = read_config_file(a.config).to_dict()
        for name in ("out", "resume", "exist_ok", "force"):  # a repeat is a new run
            saved.pop(name)
        given = {**saved, **given}
    return given


def _train(a: argparse.Namespace) -> None:
    from .engine.train import train

    o = from_namespace(TrainOptions, a)
    train(**train_overrides(a), limits=data_limits(o.limits))


class SkippedInputs(Exception):
    """Some inputs could not be used; the rest were processed (exit code 1)."""


def _predict(a: argparse.Namespace) -> None:
    o = from_namespace(PredictOptions, a)
    from .commands import predict_files
    from .engine.run_folder import new_run_dir
    from .predict import load
    from .video import is_video_source, predict_video

    limits = data_limits(o.limits)
    out = o.out if o.out is not None else str(new_run_dir("runs", "predict"))
    weights = o.weights
    if o.backend == "onnx" and not weights.lower().endswith(".onnx"):
        weights = _exported_copy(weights, limits.max_pixels)
    det = load(weights, device=o.device, precision=o.precision, max_pixels=limits.max_pixels)
    images = [s for s in o.inputs if not is_video_source(s)]
    skipped: list[str] = []
    if images:
        for line in predict_files(det, images, out, o.post, skipped, limits):
            print(json.dumps(line), flush=True)
    for source in (s for s in o.inputs if is_video_source(s)):
        lines = predict_video(
            det, source, out, o.post, max_frames=o.max_frames, limits=limits, skipped=skipped
        )
        for line in lines:
            print(json.dumps(line), flush=True)
    if skipped:
        raise SkippedInputs(f"{len(skipped)} input(s) skipped or cut short (listed above)")


def _exported_copy(weights: str, max_pixels: int) -> str:
    """``--backend onnx`` with a checkpoint: export it to a temporary .onnx first."""
    import atexit
    import shutil
    import tempfile

    from .export.onnx import export_onnx

    folder = tempfile.mkdtemp(prefix="tinyssd-onnx-")
    atexit.register(shutil.rmtree, folder, True)
    return str(export_onnx(weights, f"{folder}/model.onnx", max_pixels=max_pixels))


def _serve(a: argparse.Namespace) -> None:
    o = from_namespace(ServeOptions, a)
    from .serve import serve

    limits = data_limits(o.limits)
    serve(
        o.weights,
        o.host,
        o.port,
        o.device,
        o.precision,
        o.post,
        o.max_upload_mb,
        limits,
        max_batch=o.max_batch,
        batch_wait_ms=o.batch_wait_ms,
    )


def _eval(a: argparse.Namespace) -> None:
    o = from_namespace(EvalOptions, a)
    from .commands import evaluate_run

    limits = data_limits(o.limits)
    evaluate_run(
        o.weights,
        o.data,
        o.split,
        o.format,
        o.json,
        o.out,
        limits=limits,
        classes_map=o.classes_map,
        force=o.force,
    )


def _export(a: argparse.Namespace) -> None:
    o = from_namespace(ExportOptions, a)
    from pathlib import Path

    from .export.onnx import export_onnx

    if Path(o.out).exists() and not o.overwrite:
        raise UsageError(f"--out {o.out}: file exists (pass --overwrite to replace it)")
    path = export_onnx(
        o.weights,
        o.out,
        max_pixels=data_limits(o.limits).max_pixels,
        opset=o.opset,
        nms=o.nms,
        topk_candidates=o.topk_candidates,
        max_detections=o.max_detections,
        box_vote=o.box_vote,
        input_dtype=o.input_dtype,
        int8=o.int8,
        calibration=o.calibration,
        calibration_images=o.calibration_images,
    )
    print(path)


def _data_download(a: argparse.Namespace) -> None:
    o = from_namespace(DownloadOptions, a)
    from .data.download import download_bananas

    print(download_bananas(o.to))


def _data_synth(a: argparse.Namespace) -> None:
    o = from_namespace(SynthOptions, a)
    from .data.synthetic import make_synthetic

    print(make_synthetic(o.out_dir, o.train, o.val, o.classes, o.seed, o.size))


def _data_check(a: argparse.Namespace) -> None:
    o = from_namespace(CheckOptions, a)
    from .data.check import anchor_fit_summary, check_dataset

    limits = data_limits(o.limits)
    report = check_dataset(o.dir, o.format, limits)
    print(report.summary(first=o.first))
    if o.model:
        print(anchor_fit_summary(o.dir, o.format, o.model, o.image_size, limits))
    if o.plots:
        from .data.check import write_check_plots

        print("plots:", *write_check_plots(o.dir, o.format, o.model, o.image_size, limits))
    report.raise_for_errors()  # errors (a leak between splits, ...): exit code 2


def _data_convert(a: argparse.Namespace) -> None:
    o = from_namespace(ConvertOptions, a)
    from .data.convert import convert

    print(convert(o.src, to=o.to, out=o.out, format=o.format, limits=data_limits(o.limits)))


def _bench(a: argparse.Namespace) -> None:
    o = from_namespace(BenchOptions, a)
    from .engine.benchmark import run_benchmarks

    print(json.dumps(run_benchmarks(quick=o.quick), indent=1))


def _demo(a: argparse.Namespace) -> None:
    o = from_namespace(DemoOptions, a)
    from .commands import demo

    demo(o.out, o.epochs, o.data)


Run = Callable[[argparse.Namespace], None]

# (words, help, the option dataclasses, what runs it); "data" groups the data commands.
COMMANDS: list[tuple[tuple[str, ...], str, tuple[type, ...], Run]] = [
    (("train",), "train a detector", (TrainConfig, TrainOptions), _train),
    (("predict",), "draw and print detections for images", (PredictOptions,), _predict),
    (("serve",), "serve a detector over HTTP: an API and a page", (ServeOptions,), _serve),
    (("eval",), "VOC and COCO mAP of a trained detector", (EvalOptions,), _eval),
    (("data", "download"), "download a data set", (DownloadOptions,), _data_download),
    (("data", "synth"), "write the procedural data set", (SynthOptions,), _data_synth),
    (("data", "check"), "report problems in a data set", (CheckOptions,), _data_check),
    (("data", "convert"), "convert a data set to another format", (ConvertOptions,), _data_convert),
    (("export",), "export a trained detector to ONNX", (ExportOptions,), _export),
    (
        ("bench",),
        "measure training and prediction speed on this machine",
        (BenchOptions,),
        _bench,
    ),
    (
        ("demo",),
        "synthesise data, train briefly, predict, show pictures",
        (DemoOptions,),
        _demo,
    ),
]
DATA_HELP = "download, synthesise, check and convert data sets"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinyssd")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """``tinyssd``'s parser: a subcommand per entry of COMMANDS."""
    p = argparse.ArgumentParser(prog="tinyssd", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"tinyssd {_version()}")
    groups: dict[tuple[str, ...], Any] = {(): p.add_subparsers(dest="command", required=True)}
    for words, help_text, classes, run in COMMANDS:
        if words[:-1] not in groups:  # "data": the first of its commands makes the group
            data = groups[()].add_parser(words[0], help=DATA_HELP, description=DATA_HELP)
            groups[words[:-1]] = data.add_subparsers(dest="data_command", required=True)
        group = groups[words[:-1]]
        # train: only what is typed overrides a recipe, --config or a resumed run's settings
        is_train = TrainConfig in classes
        c = group.add_parser(
            words[-1],
            help=help_text,
            description=help_text,
            argument_default=argparse.SUPPRESS if is_train else None,
        )
        for cls in classes:
            recipes = RECIPES if cls is TrainConfig else None
            add_options(c, cls, recipes=recipes, set_defaults=not is_train)
        c.set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        a.func(a)
    except TinySSDError as e:
        _say(f"tinyssd: error: {e}")
        return 2
    except SkippedInputs as e:
        _say(f"tinyssd: {e}")
        return 1
    except BrokenPipeError:
        # the reader of our output went away (`tinyssd predict ... | head -1`): end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as e:  # permissions, a full disk, a read-only folder: name the path
        where = e.filename if e.filename is not None else "tinyssd"
        _say(f"tinyssd: error: {where}: {e.strerror or e}")
        return 2
    except KeyboardInterrupt:
        _say("tinyssd: interrupted")
        return 130
    return 0


def _say(line: str) -> None:
    """``line`` to stderr in one write: processes sharing the stream (torchrun's ranks) do
    not glue their lines together, as ``print``'s separate newline let them."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
