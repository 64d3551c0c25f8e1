"""Prediction speed and accuracy per backend: fp32, bf16, onnxruntime fp32 and int8, in one run.

    python bench/predict.py [--weights RUN ...] [--train-epochs 30] [--repeats 50] [--out FILE]

For each model (the runs given by ``--weights``, else short runs trained here on
the bananas and BCCD when ``../shared/data`` has them) it exports the fp32 and
the int8 graph (``tinyssd export [--int8]``, calibrated on
``--calibration-images`` of the run's training images) and prints JSON, per
backend: the median ms of one single-image prediction (resize, network,
decoding, NMS; a 256 px synthetic image at the model's input size, threshold 0.01),
for the onnxruntime graphs also of one val photo at its own size and the model's own
threshold (``photo_predict_ms``: what ``tinyssd predict`` costs), batch-32
images/s, and the val AP / AP50 as ``tinyssd eval`` scores them. Then the
ratios that matter: int8 over onnxruntime fp32 (single-image speed-up) and the
AP points int8 loses. Every figure is of this machine: the JSON names its CPU
and whether it has AVX-512 VNNI / BF16 (int8 and bf16 speed depend on them).
The chapter's ``predict`` (d2l) is timed as well, where its code is present.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from _common import BANANAS, SHARED, chapter_module, emit

from tinyssd.engine import benchmark as B

DATA_SETS = {"bananas": BANANAS, "bccd": SHARED / "data" / "bccd" / "BCCD"}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cpu() -> dict:
    """The CPU's name and the instruction sets int8 and bf16 speed depend on."""
    flags: set[str] = set()
    name = platform.processor()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return {"name": name, "has": [f for f in wanted if f in flags]}


def train_short(name: str, data: Path, epochs: int, folder: Path) -> Path:
    import tinyssd

    print(f"training {name} for {epochs} epochs", file=sys.stderr)
    return tinyssd.train(data=str(data), epochs=epochs, out=str(folder / name), progress=False)


def val_split(run: Path, classes: list[str]):
    from tinyssd.config import read_run_config
    from tinyssd.data import load_split

    train = read_run_config(run)
    return load_split(train["data"], "val", train.get("format", "auto")).with_classes(classes)


def torch_rows(run: Path, repeats: int) -> dict:
    """fp32 and bf16 (where this CPU has it) through ``Detector``'s path."""
    from tinyssd.data import DetectionDataset
    from tinyssd.inference import bf16_supported, evaluate_dataset
    from tinyssd.predict import load

    det = load(run, device="cpu", precision="fp32")
    size = det.image_size
    dataset = DetectionDataset(val_split(run, det.classes), size, None)
    rows = {}
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not bf16_supported(torch.device("cpu")):
            rows["tinyssd_bf16"] = {"skipped": "this CPU has no fast bf16 (fp32 is what runs)"}
            continue
        dtype = torch.bfloat16 if precision == "bf16" else None
        single = B.predict_latency_ms(det.model, size, repeats, 1, precision)
        batch = B.predict_latency_ms(det.model, size, max(repeats // 10, 2), 32, precision)
        metrics = evaluate_dataset(det.model, dataset, 32, "cpu", dtype)
        rows[f"tinyssd_{precision}"] = row(single, batch, metrics)
    return rows


def onnx_rows(run: Path, folder: Path, repeats: int, calibration_images: int) -> dict:
    """onnxruntime fp32 and int8 through ``OnnxDetector`` (decoding and NMS in the graph)."""
    from tinyssd.commands import evaluate_predictor
    from tinyssd.export.onnx import export_onnx
    from tinyssd.images import to_tensor
    from tinyssd.predict import OnnxDetector

    graphs = {
        "onnxruntime_fp32": export_onnx(run, folder / "fp32.onnx"),
        "onnxruntime_int8": export_onnx(
            run, folder / "int8.onnx", int8=True, calibration_images=calibration_images
        ),
    }
    dets = {name: OnnxDetector(path) for name, path in graphs.items()}
    images = list(B.synthetic_batch(32, next(iter(dets.values())).image_size)[0])
    # the graphs take turns, call by call, so that a slower minute of a shared machine
    # slows both alike and their ratio holds
    single = paired_median_ms(
        {n: partial(d.predict, images[0], threshold=0.01) for n, d in dets.items()}, repeats
    )
    batch = paired_median_ms(
        {n: partial(d.predict, images, threshold=0.01) for n, d in dets.items()},
        max(repeats // 10, 2),
    )
    # what a user's call costs: one val photo at its own size (decoded once: the resize is
    # timed), at the model's own threshold (predict's default)
    val = val_split(run, next(iter(dets.values())).classes)
    photo = to_tensor(val.records[0].image)
    user = paired_median_ms({n: partial(d.predict, photo) for n, d in dets.items()}, repeats)
    rows = {}
    for name, det in dets.items():
        metrics = evaluate_predictor(det, val.records)
        rows[name] = row(single[name], batch[name], metrics)
        rows[name]["photo_predict_ms"] = round(user[name], 2)
        rows[name]["photo"] = f"{photo.shape[2]}x{photo.shape[1]}, threshold {det.score_threshold}"
    return rows


def paired_median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """:func:`median_ms` of each of ``fns``, timed in turns (one call of each per round)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def row(single_ms: float, batch32_ms: float, metrics: dict) -> dict:
    return {
        "predict_ms": round(single_ms, 2),
        "batch32_images_per_s": round(32e3 / batch32_ms, 1),
        "val_AP": round(float(metrics["AP"]), 4),
        "val_AP50": round(float(metrics["AP50"]), 4),
    }


def ratios(rows: dict) -> dict:
    fp32, int8 = rows.get("onnxruntime_fp32"), rows.get("onnxruntime_int8")
    if not fp32 or not int8:
        return {}
    return {
        "int8_speedup_vs_onnxruntime_fp32": round(fp32["predict_ms"] / int8["predict_ms"], 2),
        "int8_photo_speedup_vs_onnxruntime_fp32": round(
            fp32["photo_predict_ms"] / int8["photo_predict_ms"], 2
        ),
        "int8_batch32_speedup_vs_onnxruntime_fp32": round(
            int8["batch32_images_per_s"] / fp32["batch32_images_per_s"], 2
        ),
        "int8_AP_points_lost": round(100 * (fp32["val_AP"] - int8["val_AP"]), 2),
        "int8_AP50_points_lost": round(100 * (fp32["val_AP50"] - int8["val_AP50"]), 2),
    }


def flat_keys(rows: dict) -> dict:
    """``tinyssd_fp32_predict_ms``, ``onnxruntime_int8_batch32_images_per_s``, ...: one
    model's timings under the names earlier versions of this script wrote."""
    keys = ("predict_ms", "batch32_images_per_s")
    return {f"{name}_{k}": row[k] for name, row in rows.items() for k in keys if k in row}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", nargs="*", default=[], help="run folders (default: train here)")
    p.add_argument("--train-epochs", type=int, default=30, help="without --weights")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--calibration-images", type=int, default=200)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    result: dict = {"cpu": cpu(), "threads": torch.get_num_threads()}
    chapter = chapter_module()
    if chapter is not None:
        net = chapter.TinySSD(num_classes=1).eval()
        x = B.synthetic_batch(1)[0].float()
        with torch.no_grad():
            result["chapter_predict_ms"] = median_ms(lambda: chapter.predict(net, x), a.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {Path(w).name: Path(w) for w in a.weights}
        if not runs:
            runs = {
                name: train_short(name, data, a.train_epochs, Path(tmp))
                for name, data in DATA_SETS.items()
                if data.is_dir()
            }
        if not runs:
            raise SystemExit("bench/predict.py: no --weights and no shared data to train on")
        for name, run in runs.items():
            folder = Path(tmp) / f"graphs-{name}"
            folder.mkdir()
            rows = torch_rows(run, a.repeats)
            rows |= onnx_rows(run, folder, a.repeats, a.calibration_images)
            result[name] = {"weights": str(run), **rows, **ratios(rows)}
            if name == next(iter(runs)):  # the flat keys bench/readme_table.py reads
                result |= flat_keys(rows)
    emit(result, a.out)


if __name__ == "__main__":
    main()
