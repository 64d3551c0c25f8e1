"""Prediction latency: one image (decode + NMS included) and batch throughput, vs the chapter.

    python bench/predict.py [--out bench/results/predict.json]

Prints JSON: median ms per single-image prediction for the chapter's
``predict`` (d2l.multibox_detection), for tinyssd's ``Detector.predict``
path (BatchNorm folded, channels_last, batched NMS; fp32 and bf16) and for
the ONNX export run by onnxruntime (``OnnxDetector.predict``: decoding and NMS
in the graph; fp32), and batch-32 images/s, all in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import chapter_module, emit

from tinyssd.engine import benchmark as B
from tinyssd.models import build_model
from tinyssd.models.fuse import fold_batchnorm


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def onnxruntime_predict_ms(model: torch.nn.Module, repeats: int) -> tuple[float, float] | None:
    """``OnnxDetector.predict`` on one 256 px image and on a batch of 32, as
    ``B.predict_latency_ms`` measures ``predict_batch`` (same synthetic images, score
    threshold 0.01): (single-image ms, batch-32 ms); None without onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        print(f"onnxruntime row skipped: {e}", file=sys.stderr)
        return None
    from tinyssd.export.onnx import export_model
    from tinyssd.predict import OnnxDetector

    with tempfile.TemporaryDirectory() as tmp:
        det = OnnxDetector(export_model(model, ["object"], Path(tmp) / "model.onnx"))
    image = B.synthetic_batch(1)[0][0]
    batch = list(B.synthetic_batch(32)[0])  # 32 images, predicted as one batch
    single = median_ms(lambda: det.predict(image, threshold=0.01), repeats)
    return single, median_ms(lambda: det.predict(batch, threshold=0.01), 5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "image_size": 256}
    chapter = chapter_module()
    if chapter is not None:
        net = chapter.TinySSD(num_classes=1).eval()
        x = B.synthetic_batch(1)[0].float()
        with torch.no_grad():
            result["chapter_predict_ms"] = median_ms(lambda: chapter.predict(net, x), a.repeats)

    model = fold_batchnorm(build_model("tiny_ssd", 1))
    for precision in ("fp32", "bf16"):
        ms = B.predict_latency_ms(model, repeats=a.repeats, precision=precision)
        result[f"tinyssd_{precision}_predict_ms"] = ms
        batch_ms = B.predict_latency_ms(model, repeats=5, batch=32, precision=precision)
        result[f"tinyssd_{precision}_batch32_images_per_s"] = 32e3 / batch_ms
        if "chapter_predict_ms" in result:
            result[f"speedup_{precision}_vs_chapter"] = result["chapter_predict_ms"] / ms
    ort = onnxruntime_predict_ms(model, a.repeats)
    if ort is not None:
        result["onnxruntime_fp32_predict_ms"] = ort[0]
        result["onnxruntime_fp32_batch32_images_per_s"] = 32e3 / ort[1]
        result["speedup_onnxruntime_vs_tinyssd_fp32"] = result["tinyssd_fp32_predict_ms"] / ort[0]
    emit(result, a.out)


if __name__ == "__main__":
    main()
