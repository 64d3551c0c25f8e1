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
from pathlib import Path

from .data.base import IMAGE_SUFFIXES, read_image
from .data.limits import DataLimits
from .errors import DataError, UsageError
from .files import atomic_write
from .options import DEMO_EPOCHS
from .postprocess import PostprocessConfig, resolve_postprocess
from .predict import Detector, Predictor, detection_line, load, write_picture

log = logging.getLogger("tinyssd")


def image_files(inputs: Sequence[str | Path]) -> list[tuple[Path, Path]]:
    """Every image named or found (recursively) in ``inputs``, with its path relative to
    the folder it was found in (a named file: its own name).

    Special files (FIFOs, devices) are left out. DataError when an input does
    not exist or nothing is found.
    """
    found: list[tuple[Path, Path]] = []
    for p in map(Path, inputs):
        if p.is_dir():
            in_dir = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            found += [(f, f.relative_to(p)) for f in in_dir if f.is_file()]
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
    out: str | Path = "predictions",
    post: PostprocessConfig | None = None,
    skipped: list[str] | None = None,
    limits: DataLimits | None = None,
    threshold: float | None = None,
) -> Iterator[dict]:
    """Predict each image file, draw its boxes into ``out/NAME.png``, yield a JSON-able dict.

    ``post``: the post-processing settings (default ``PostprocessConfig()``), with
    ``threshold``, when given, as its ``score_threshold``; ``limits``: the pixel
    budget of an image (default ``DataLimits.from_env()``).
    An unreadable image is logged, appended to ``skipped`` and passed over; the
    others are still predicted.
    """
    post = resolve_postprocess(post, threshold)
    out = Path(out)
    files = image_files(inputs)
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


def evaluate_run(
    weights: str | Path,
    data: str | Path,
    split: str = "val",
    format: str = "auto",
    json_out: str | Path | None = None,
    out: str | Path = ".",
    quiet: bool = False,
    limits: DataLimits | None = None,
) -> dict:
    """``tinyssd eval``: mAP of a trained detector on a split; prints the table, writes the
    PR curves to ``out/pr_curve.png`` and, with ``json_out``, the metrics as JSON.

    Predictions are selected by ``tinyssd.postprocess.EVAL_POSTPROCESS`` (every
    score >= 0.01, as mAP needs). ``limits`` go to the reader (default
    ``DataLimits.from_env()``).
    """
    from .data import DetectionDataset, Report, load_split
    from .evaluation import to_json
    from .evaluation.plot import format_table, plot_pr_curves
    from .inference import evaluate_dataset

    det = load(weights)
    if not isinstance(det, Detector):
        raise UsageError(f"{weights}: eval needs a checkpoint or run folder, not an exported graph")
    report = Report()
    split_data = load_split(data, split, format, report, limits)
    split_data = split_data.with_classes(det.classes)
    dataset = DetectionDataset(split_data, det.image_size, None, report, limits=limits)
    if report:
        log.info("data check:\n%s", report.summary())
    result = evaluate_dataset(det.model, dataset, 32, det.device)
    if not quiet:
        print(format_table(result, det.classes))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("PR curves: %s", plot_pr_curves(result, det.classes, out / "pr_curve.png"))
    if json_out:
        atomic_write(json_out, json.dumps(to_json(result), indent=1))
    return result


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
    det = load(run)
    val_images = sorted((Path(data) / "bananas_val" / "images").iterdir())[:8]
    lines = list(predict_files(det, val_images, out=Path(out) / "predictions"))
    print(f"\nrun folder:        {run}")
    print(f"training curves:   {Path(run) / 'curves.png'}")
    print(f"val predictions:   {Path(run) / 'val_predictions.png'}")
    print(f"predicted images:  {Path(out) / 'predictions'}/ ({len(lines)} PNGs)")
    return Path(run)
