"""Commands that print and write files: ``tinyssd predict`` (images), ``eval`` and ``demo``.

The library (``tinyssd.predict``, ``tinyssd.inference``) returns values; these
functions are what the CLI calls to write pictures, tables and JSON.

    for line in predict_files(det, ["photos/"], out="predictions"):   # one dict per image
        print(json.dumps(line))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from .data.base import IMAGE_SUFFIXES, Record, Split, read_image
from .data.limits import DataLimits
from .errors import DataError, UsageError
from .files import atomic_path, atomic_write
from .options import DEMO_EPOCHS
from .postprocess import EVAL_POSTPROCESS, PostprocessConfig
from .predict import Detector, Predictor, detection_line, load, write_picture
from .predict.base import resolve_for_model

if TYPE_CHECKING:
    from .engine.report import TrainResult

log = logging.getLogger("tinyssd")


def image_files(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Every image named or found (recursively) in ``inputs``, with its path relative to
    the folder it was found in (a named file: its own name).

    Found in a folder, everything with an image suffix but a folder is listed (by
    ``stat``, nothing is opened): a FIFO or device among them is refused by
    ``read_image`` without being opened, so it is skipped and counted, not lost.
    DataError when an input does not exist or nothing is found.
    """
    found: list[tuple[Path, Path]] = []
    for p in map(Path, inputs):
        if p.is_dir():
            in_dir = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(p)) for f in in_dir if not f.is_dir()]
        elif p.is_file():
            found.append((p, Path(p.name)))
        elif p.exists():
            raise DataError(f"{p}: not a regular file or folder")
        else:
            raise DataError(f"{p}: no such image file or folder")
    if not found:
        suffixes = " ".join(IMAGE_SUFFIXES)
        names = ", ".join(map(str, inputs))
        raise DataError(f"{names}: no images found (searched folders recursively for {suffixes})")
    return found


def picture_paths(files: list[tuple[Path, Path]], out: Path) -> list[Path]:
    """Where each image's drawn picture goes: ``out/REL/NAME.png``, never the same path twice
    (``a.jpg`` and ``a.png``, one name in two folders) and never an input image."""
    inputs = {f.resolve() for f, _ in files}
    taken: set[Path] = set()
    stems = [out / rel.with_suffix(".png") for _, rel in files]
    clash = {p for p in stems if stems.count(p) > 1}
    paths = []
    for (_, rel), path in zip(files, stems, strict=True):
        if path in clash:  # a.jpg and a.png -> a_jpg.png, a_png.png
            path = out / rel.parent / f"{rel.stem}_{rel.suffix.lstrip('.').lower()}.png"
        candidate, i = path, 2
        while candidate in taken or candidate.resolve() in inputs:
            candidate = path.with_name(f"{path.stem}_{i}.png")
            i += 1
        taken.add(candidate)
        paths.append(candidate)
    return paths


def predict_files(
    det: Predictor,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    post: PostprocessConfig | None = None,
    skipped: list[str] | None = None,
    limits: DataLimits | None = None,
    threshold: float | None = None,
) -> Iterator[dict]:
    """Predict each image file, draw its boxes into ``out/NAME.png``, yield a JSON-able dict.

    ``out``: None is the first free ``runs/predict``, ``runs/predict2``, ... (as
    ``tinyssd predict`` without ``--out``); ``post``: the post-processing settings
    (default ``PostprocessConfig()``), with ``threshold``, when given, as its
    ``score_threshold`` (else the model's own: ``det.score_threshold``); ``limits``:
    the pixel budget of an image (default ``DataLimits.from_env()``).
    An unreadable image (or a FIFO, device, broken link) is logged, appended to
    ``skipped`` and passed over; the others are still predicted.
    """
    from .engine.run_folder import new_run_dir

    files = image_files(inputs)  # DataError for a missing input before anything is loaded
    out = Path(out) if out is not None else new_run_dir("runs", "predict")
    post = resolve_for_model(det.score_threshold, post, threshold)
    for (f, _), picture in zip(files, picture_paths(files, out), strict=True):
        try:
            image = read_image(f, limits)
        except DataError as e:
            log.warning("skipped: %s", e)
            if skipped is not None:
                skipped.append(str(f))
            continue
        d = det.predict(image, post=post)[0]
        if not len(d["scores"]):
            log.info("%s: no box scored >= %g (--threshold)", f, post.score_threshold)
        write_picture(image, d, det.classes, picture)
        height, width = int(image.shape[1]), int(image.shape[2])
        yield {"image": str(f), **detection_line(d, width, height), "picture": str(picture)}


def evaluate_predictor(
    det: Predictor,
    records: Sequence[Record],
    batch_size: int = 16,
    limits: DataLimits | None = None,
) -> dict:
    """VOC and COCO metrics of any predictor (an exported ``.onnx`` too) on ``records``:
    each image read at its full size and predicted with ``EVAL_POSTPROCESS`` (every score
    >= 0.01), as ``tinyssd eval`` scores a checkpoint."""
    from .evaluation import evaluate

    predictions: list[dict] = []
    for start in range(0, len(records), batch_size):
        images = [read_image(r.image, limits) for r in records[start : start + batch_size]]
        predictions += det.predict(images, post=EVAL_POSTPROCESS)
    targets = [
        {"boxes": r.boxes, "labels": r.labels, "difficult": r.difficult, "iscrowd": r.iscrowd}
        for r in records
    ]
    return evaluate(predictions, targets)


def evaluate_run(
    weights: str | Path,
    data: str | Path,
    split: str = "val",
    format: str = "auto",
    json_out: str | Path | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    limits: DataLimits | None = None,
    classes_map: str | None = None,
    force: bool = False,
) -> dict:
    """``tinyssd eval``: mAP of a trained detector on a split; prints the tables, writes the
    report into ``out`` (None: the first free ``runs/eval``, ``runs/eval2``, ...):
    ``results.json`` (per class: images, instances, P and R at the model's score
    threshold, AP50, AP), ``val_predictions.png``, ``confusion_matrix.png``, the P, R, F1
    and PR curves; with ``json_out``, ``evaluate``'s whole result as JSON.

    Predictions are selected by ``tinyssd.postprocess.EVAL_POSTPROCESS`` (every
    score >= 0.01, as mAP needs). ``limits`` (default ``DataLimits.from_env()``) go to
    the reader and bound the input size the model claims (``load``'s ``max_pixels``).
    Data whose class names are not all the model's is a UsageError unless
    ``classes_map`` (``"OLD=NEW,..."``: the data's names to the model's) or ``force``
    (labels scored by position) says how to pair them.
    """
    from .data import DetectionDataset, Report, load_split
    from .engine.run_folder import new_run_dir
    from .evaluation import evaluate, to_json
    from .evaluation.plot import format_table, plot_pr_curves
    from .inference import predict_dataset

    limits = limits if limits is not None else DataLimits.from_env()
    det = load(weights, max_pixels=limits.max_pixels)  # the input size it claims: S * S
    report = Report()
    split_data = load_split(data, split, format, report, limits)
    split_data = match_classes(split_data, det.classes, classes_map, force)
    if not isinstance(det, Detector):  # an exported graph (fp32 or int8), run by onnxruntime
        if report:
            log.info("data check:\n%s", report.summary())
        result = evaluate_predictor(det, split_data.records, limits=limits)
    else:
        dataset = DetectionDataset(
            split_data, det.image_size, None, report, limits=limits, tiling=det.tiling
        )
        if report:
            log.info("data check:\n%s", report.summary())
        # the model's own box voting (none for torchvision's COCO detectors)
        post = replace(EVAL_POSTPROCESS, box_vote=det.default_post.box_vote)
        predictions = predict_dataset(det.model, dataset, 32, det.device, post=post)
        targets = [dataset.targets_in_pixels(i) for i in range(len(dataset))]
        result = evaluate(predictions, targets)
    if not quiet:
        print(format_table(result, det.classes))
    out = Path(out) if out is not None else new_run_dir("runs", "eval")
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(det, Detector):
        write_eval_report(det, dataset, predictions, targets, result, out, quiet)
    else:
        with atomic_path(out / "PR_curve.png") as tmp:
            plot_pr_curves(result, det.classes, tmp)
        log.info("PR curves: %s", out / "PR_curve.png")
        log.info("the other pictures and results.json: eval the checkpoint, not the graph")
    if json_out:
        atomic_write(json_out, json.dumps(to_json(result), indent=1))
    return result


def parse_classes_map(text: str) -> dict[str, str]:
    """``--classes-map``'s ``"OLD=NEW,..."`` as a dict; UsageError naming the bad item."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        old, sep, new = (part.strip() for part in item.partition("="))
        if not sep or not old or not new:
            raise UsageError(f"--classes-map: {item!r} is not OLD=NEW (e.g. --classes-map dog=cat)")
        if old in pairs:
            raise UsageError(f"--classes-map: {old!r} is mapped twice")
        pairs[old] = new
    return pairs


def match_classes(
    split: Split, classes: list[str], classes_map: str | None = None, force: bool = False
) -> Split:
    """``split`` labelled by the model's ``classes``, matched by name.

    ``classes_map`` (``"OLD=NEW,..."``) renames the data's classes first. Names still
    not among ``classes`` are a UsageError naming both lists, unless ``force``: then
    labels are scored by position (data label i as the model's class i), with a warning.
    """
    names = list(split.classes)
    if classes_map:
        renames = parse_classes_map(classes_map)
        for old, new in renames.items():
            if old not in names:
                raise UsageError(f"--classes-map: {old!r} is not a class of the data {names}")
            if new not in classes:
                raise UsageError(f"--classes-map: {new!r} is not a class of the model {classes}")
        names = [renames.get(n, n) for n in names]
    if set(names) <= set(classes):
        return Split(split.records, names, split.root).with_classes(classes)
    if not force:
        raise UsageError(
            f"{split.root}: class names {names} differ from the model's {classes} "
            "(pass --classes-map DATA=MODEL,... to pair them, or --force to score by position)"
        )
    if len(names) > len(classes):
        raise UsageError(
            f"--force: the data has {len(names)} classes {names}, the model only "
            f"{len(classes)} {classes}; pair them with --classes-map"
        )
    log.warning(
        "--force: the data's classes %s scored by position as the model's %s", names, classes
    )
    return Split(split.records, list(classes), split.root)


def write_eval_report(
    det: Detector,
    dataset,
    predictions: list[dict],
    targets: list[dict],
    result: dict,
    out: Path,
    quiet: bool = False,
) -> list[Path]:
    """``tinyssd eval``'s report at the model's score threshold: the class table printed,
    ``results.json`` and the pictures written into ``out``, their list logged."""
    from .engine.run_folder import save_val_predictions
    from .evaluation.plot import format_class_table
    from .evaluation.report import build_report, write_report

    threshold = det.score_threshold
    report = build_report(predictions, targets, det.classes, threshold, result)
    if not quiet:
        print(format_class_table(report.rows, threshold))
    files = write_report(report, out)
    files.append(
        save_val_predictions(dataset, predictions, out / "val_predictions.png", 8, threshold)
    )
    log.info("report in %s: %s", out, ", ".join(p.name for p in files))
    return files


def demo_summary(run: TrainResult) -> str:
    """The val figures a newcomer should see, from the run's own end report (the best
    weights, P and R at their stored threshold: ``results.json``'s ``all`` row)."""
    pooled = next((row for row in run.classes if row["class"] == "all"), None)
    if pooled is None or run.threshold is None:
        return "no val report: the data has no val images"
    return (
        f"val ({pooled['images']} images): AP50 {pooled['AP50']:.3f}, AP {pooled['AP']:.3f}; "
        f"at the drawn threshold {run.threshold:.2f} (F1-optimal on val): "
        f"recall {pooled['recall']:.3f}, precision {pooled['precision']:.3f}"
    )


def demo(
    out: str | Path = "runs/demo", epochs: int | None = None, data: str | Path | None = None
) -> Path:
    """``make demo``: train on the built-in synthetic set (or ``data``), predict on val images."""
    from .data.synthetic import ensure_synthetic
    from .engine.train import train

    data = Path(data) if data is not None else ensure_synthetic()
    run = train(
        data=str(data),
        epochs=DEMO_EPOCHS if epochs is None else epochs,
        out=str(out),
        exist_ok=True,  # the demo's own folder: `make demo` twice replaces its run
    )
    det = load(run.path)
    val_images = sorted((Path(data) / "bananas_val" / "images").iterdir())[:8]
    lines = list(predict_files(det, val_images, out=Path(out) / "predictions"))
    print(f"\n{demo_summary(run)}")
    print(f"run folder:        {run}")
    print(f"training curves:   {Path(run) / 'curves.png'}")
    print(f"val predictions:   {Path(run) / 'val_predictions.png'}")
    print(f"predicted images:  {Path(out) / 'predictions'}/ ({len(lines)} PNGs)")
    return Path(run)
