"""The Python API behind the CLI: load a trained detector, predict, evaluate, demo.

det = tinyssd.load("runs/bananas")
det.predict("photo.jpg", threshold=0.5)   # [{"boxes", "scores", "labels", "names"}]
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .data.base import IMAGE_SUFFIXES, DataError, read_image
from .data.dataset import resize_image
from .engine.checkpoint import read_checkpoint, resolve_weights, split_state
from .errors import CheckpointError, UsageError
from .inference import (
    DEFAULT_THRESHOLD,
    autocast,
    evaluate_dataset,
    predict_batch,
    resolve_device,
    resolve_precision,
)
from .models import SSD, SSDConfig
from .models.fuse import fold_batchnorm

if TYPE_CHECKING:
    from .export.runtime import OnnxDetector

log = logging.getLogger("tinyssd")

ImageLike = str | Path | Image.Image | Tensor | np.ndarray


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many: a list, a tuple, a 4-D tensor ``[B, 3, H, W]`` or array
    ``[B, H, W, 3]``."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if isinstance(images, (Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    return [images]  # type: ignore[list-item]


def _to_tensor(image: ImageLike) -> Tensor:
    """Any accepted image -> ``Tensor[3, H, W]`` uint8 RGB.

    Accepts a path, a PIL image, a uint8 tensor ``[3, H, W]`` or a uint8 NumPy
    array ``[H, W, 3]`` (RGB, as PIL and imageio give; ``[H, W]`` grey too).
    """
    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, Image.Image):
        arr = torch.from_numpy(np.asarray(image.convert("RGB")).copy())
        return arr.permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (
            image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)
        ):
            raise ValueError(
                f"image array must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}"
            )
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(
                f"image tensor must be uint8 (3, H, W), got {image.dtype} {tuple(image.shape)}"
            )
        return image
    raise TypeError(f"cannot read an image from {type(image).__name__}")


class Detector:
    """A trained SSD with its class names, ready to predict on images of any size."""

    def __init__(
        self, model: SSD, classes: Sequence[str], device: torch.device, precision: str = "auto"
    ) -> None:
        # BatchNorm folded into the convolutions: same outputs, fewer passes over memory
        self.model = fold_batchnorm(model).to(device).to(memory_format=torch.channels_last)
        self.autocast_dtype = resolve_precision(precision, device)
        self.classes = list(classes)
        self.device = device
        self.image_size = model.config.image_size

    @torch.inference_mode()
    def predict(
        self,
        images: ImageLike | Sequence[ImageLike],
        threshold: float = DEFAULT_THRESHOLD,
        nms_threshold: float = 0.45,
        max_detections: int = 200,
    ) -> list[dict]:
        """Detections with score >= ``threshold``, one dict per image.

        ``images``: one image or a list of them (paths, PIL images, uint8
        ``[3, H, W]`` tensors, uint8 ``[H, W, 3]`` arrays), or a 4-D batch
        (tensor ``[B, 3, H, W]`` or array ``[B, H, W, 3]``).

        Returns:
            per image ``boxes`` Tensor[N, 4] xyxy in that image's pixels,
            ``scores`` Tensor[N], ``labels`` Tensor[N] (1..C), ``names`` list[str].
        """
        tensors = [_to_tensor(im) for im in as_image_list(images)]
        sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
        batch = torch.stack([resize_image(t, self.image_size) for t in tensors]).to(self.device)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.autocast_dtype):
            dets = predict_batch(
                self.model,
                batch,
                sizes,
                score_threshold=max(threshold, 1e-6),
                nms_threshold=nms_threshold,
                max_detections=max_detections,
            )
        out = []
        for d in dets:
            record: dict[str, Any] = {k: v.cpu() for k, v in d.items()}
            record["names"] = [self.classes[int(i) - 1] for i in record["labels"]]
            out.append(record)
        return out


def load(
    run_or_file: str | Path, device: str = "auto", precision: str = "auto"
) -> Detector | OnnxDetector:
    """A Detector from a run folder (its best checkpoint), a checkpoint file, or an
    exported ``.onnx`` file (run by onnxruntime on the CPU: ``OnnxDetector``).

    ``precision``: ``"bf16"`` runs the network under bf16 autocast (about twice
    as fast on CPUs with bf16 support; scores differ from fp32 in the second or
    third decimal), ``"fp32"`` without; ``"auto"`` (the default, as in
    training) takes bf16 where the device supports it.
    """
    if str(run_or_file).lower().endswith(".onnx"):
        return load_onnx(run_or_file, device, precision)
    path = resolve_weights(run_or_file)
    tensors, meta = read_checkpoint(path)
    log.info("loaded %s (epoch %s)", path, meta.get("epoch", "?"))
    try:
        cfg = meta["config"]
        model = SSD(cfg["num_classes"], SSDConfig.from_dict(cfg["ssd"]))
        model.load_state_dict(split_state(tensors, "model."))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot rebuild the model ({first})") from None
    return Detector(model, cfg["classes"], resolve_device(device), precision)


def load_onnx(path: str | Path, device: str = "auto", precision: str = "auto") -> OnnxDetector:
    """An exported graph run by onnxruntime: CPU, fp32 (what the graph holds)."""
    from .export.runtime import OnnxDetector

    if device not in ("auto", "cpu"):
        raise UsageError(f"--device {device}: the onnx backend runs on the CPU here")
    if precision not in ("auto", "fp32"):
        raise UsageError(f"--precision {precision}: an exported graph runs in fp32")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    log.info("loaded %s (onnxruntime)", path)
    return OnnxDetector(path)


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
    det: Detector | OnnxDetector,
    inputs: Sequence[str | Path],
    threshold: float = DEFAULT_THRESHOLD,
    out: str | Path = "predictions",
    skipped: list[str] | None = None,
) -> Iterator[dict]:
    """Predict each image file, draw its boxes into ``out/NAME.png``, yield a JSON-able dict.

    An unreadable image is logged, appended to ``skipped`` and passed over; the
    others are still predicted.
    """
    from .viz import draw_detections

    out = Path(out)
    files = image_files(inputs)
    for (f, _), picture in zip(files, picture_paths(files, out), strict=True):
        try:
            image = read_image(f)
        except DataError as e:
            log.warning("skipped: %s", e)
            if skipped is not None:
                skipped.append(str(f))
            continue
        d = det.predict(image, threshold=threshold)[0]
        if not len(d["scores"]):
            log.info("%s: no box scored >= %g (--threshold)", f, threshold)
        picture.parent.mkdir(parents=True, exist_ok=True)
        drawn = draw_detections(image, d["boxes"], d["scores"], d["labels"], det.classes)
        tmp = picture.with_name(f".{picture.name}.tmp")
        drawn.save(tmp, format="PNG")
        tmp.replace(picture)
        yield {
            "image": str(f),
            "width": int(image.shape[2]),
            "height": int(image.shape[1]),
            "boxes": [[round(v, 2) for v in b] for b in d["boxes"].tolist()],
            "scores": [round(s, 4) for s in d["scores"].tolist()],
            "labels": d["labels"].tolist(),
            "names": d["names"],
            "picture": str(picture),
        }


def evaluate_run(
    weights: str | Path,
    data: str | Path,
    split: str = "val",
    format: str = "auto",
    json_out: str | Path | None = None,
    out: str | Path = ".",
    quiet: bool = False,
) -> dict:
    """``tinyssd eval``: mAP of a trained detector on a split; table, PR curves, JSON."""
    from .data import DetectionDataset, Report, load_split
    from .evaluation import to_json
    from .evaluation.plot import format_table, plot_pr_curves

    det = load(weights)
    if not isinstance(det, Detector):
        raise UsageError(f"{weights}: eval needs a checkpoint or run folder, not an exported graph")
    report = Report()
    dataset = DetectionDataset(
        load_split(data, split, format, report).with_classes(det.classes),
        det.image_size,
        None,
        report,
    )
    if report:
        log.info("data check:\n%s", report.summary())
    result = evaluate_dataset(det.model, dataset, 32, det.device)
    if not quiet:
        print(format_table(result, det.classes))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("PR curves: %s", plot_pr_curves(result, det.classes, out / "pr_curve.png"))
    if json_out:
        Path(json_out).write_text(json.dumps(to_json(result), indent=1))
    return result


# Epochs the demo trains with the default recipe: about 2 minutes on 2 CPU cores
# (synthetic val AP50 0.909, AP 0.654 measured; 0.882 after 8 epochs).
DEMO_EPOCHS = 12


def demo(
    out: str | Path = "runs/demo", epochs: int | None = None, data: str | Path | None = None
) -> Path:
    """``make demo``: train on the built-in synthetic set (or ``data``), predict on val images."""
    from .data.synthetic import ensure_synthetic
    from .engine.train import train

    data = Path(data) if data is not None else ensure_synthetic()
    run = train(
        data=str(data),
        epochs=epochs or DEMO_EPOCHS,
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
