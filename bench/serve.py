"""Throughput and latency of ``tinyssd serve`` under a bounded local load.

    python bench/serve.py [--weights RUN] [--clients 8] [--seconds 20] [--max-batch 8] [--out FILE]

Starts ``tinyssd serve --max-batch 1`` (one request at a time: the baseline), then
``tinyssd serve --max-batch N`` (requests that arrive together predicted as one
batch), each on a free 127.0.0.1 port; warms each up, then runs ``--clients``
clients (threads, one keep-alive connection each) posting the same JPEG to
``POST /predict`` back to back for ``--seconds``. Prints JSON per server:
requests/s, latency p50/p90/p99/max in ms (client side: upload, decode,
predict, answer), the error count (non-200 answers and failed requests; the goal
is 0), and the server's batches; then the batched/baseline ratios of requests/s
and p99, and whether both servers answer the same image alike.
Without ``--weights`` it serves an untrained TinySSD of the default 256 px input,
which costs what a trained one does (its boxes are meaningless; up to 200 per image).
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from _common import emit
from PIL import Image

TIMEOUT_S = 60


def untrained_weights(folder: Path, image_size: int = 256) -> Path:
    """A fresh TinySSD checkpoint with one class, as a training run writes it."""
    import torch

    from tinyssd.checkpoint import save_checkpoint
    from tinyssd.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_ssd", 1, image_size=image_size)
    config = {"model": "tiny_ssd", "num_classes": 1, "classes": ["banana"]}
    config["ssd"] = model.config.to_dict()
    return save_checkpoint(folder / "untrained.safetensors", model, config)


def photo_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG (smooth gradients, a few blocks, mild noise) of about 50 KB at 640x480."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 200 // width, y * 200 // height, (x + y) * 100 // (width + height)], -1)
    for _ in range(4):
        x1, y1 = rng.integers(0, width * 3 // 4), rng.integers(0, height * 3 // 4)
        pixels[y1 : y1 + height // 5, x1 : x1 + width // 5] = rng.integers(0, 255, 3)
    pixels = (pixels + rng.normal(0, 4, pixels.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def start_server(
    weights: Path, threshold: float, max_batch: int, batch_wait_ms: float
) -> tuple[subprocess.Popen, str]:
    """``tinyssd serve --port 0`` and its URL, read from its log line."""
    cmd = [sys.executable, "-m", "tinyssd", "serve", "--weights", str(weights), "--port", "0"]
    cmd += ["--max-batch", str(max_batch), "--batch-wait-ms", str(batch_wait_ms)]
    process = subprocess.Popen(
        [*cmd, "--threshold", str(threshold)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            if line.startswith("tinyssd serve: http://"):
                found.append(line.split()[2].rstrip("/"))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(120) or not found:
        process.kill()
        raise SystemExit("bench/serve.py: tinyssd serve did not start")
    return process, found[0]


def client(url: str, body: bytes, deadline: float) -> tuple[list[float], int]:
    """Post ``body`` until ``deadline``: latencies (s) of good answers, and the errors."""
    latencies, errors = [], 0
    with requests.Session() as session:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                answer = session.post(
                    f"{url}/predict", files={"file": ("photo.jpg", body)}, timeout=TIMEOUT_S
                )
                ok = answer.status_code == 200 and "boxes" in answer.json()
            except (requests.RequestException, ValueError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
    return latencies, errors


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(url: str, body: bytes, clients: int, seconds: float) -> dict:
    for _ in range(3):  # warm-up: the first calls allocate and pick kernels
        requests.post(f"{url}/predict", files={"file": ("photo.jpg", body)}, timeout=TIMEOUT_S)
    start = time.perf_counter()
    deadline = start + seconds
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: client(url, body, deadline), range(clients)))
    wall = time.perf_counter() - start
    latencies = [s for lat, _ in results for s in lat]
    errors = sum(e for _, e in results)
    ms = [s * 1e3 for s in latencies]
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2),
        "latency_ms": {
            "p50": round(percentile(ms, 50), 1),
            "p90": round(percentile(ms, 90), 1),
            "p99": round(percentile(ms, 99), 1),
            "max": round(max(ms, default=float("nan")), 1),
            "mean": round(statistics.fmean(ms), 1) if ms else None,
        },
    }


def serve_and_load(weights: Path, body: bytes, a: argparse.Namespace, max_batch: int) -> dict:
    """One server's figures under the load, with its answer to ``body`` and its batches."""
    process, url = start_server(weights, a.threshold, max_batch, a.batch_wait_ms)
    try:
        health = requests.get(f"{url}/health", timeout=TIMEOUT_S).json()
        answer = requests.post(
            f"{url}/predict", files={"file": ("photo.jpg", body)}, timeout=TIMEOUT_S
        ).json()
        result = run(url, body, a.clients, a.seconds)
        predicted = requests.get(f"{url}/health", timeout=TIMEOUT_S).json()["predicted"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    per_batch = predicted["requests"] / max(predicted["batches"], 1)
    return {
        **result,
        "max_batch": max_batch,
        "images_per_batch": round(per_batch, 2),
        "device": health["device"],
        "answer": answer,
    }


def same_answer(a: dict, b: dict) -> bool:
    """The same boxes, labels and scores, up to float rounding (rows in score order)."""
    if a["labels"] != b["labels"]:
        return False
    return bool(
        np.allclose(a["boxes"], b["boxes"], atol=0.05)
        and np.allclose(a["scores"], b["scores"], atol=1e-3)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="run folder or checkpoint (default: untrained TinySSD)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-batch", type=int, default=8, help="the batched server's --max-batch")
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args()
    body = photo_jpeg(a.width, a.height)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(a.weights) if a.weights else untrained_weights(Path(tmp))
        baseline = serve_and_load(weights, body, a, 1)
        batched = serve_and_load(weights, body, a, a.max_batch)
    answers_equal = same_answer(baseline.pop("answer"), batched.pop("answer"))
    config = {
        "clients": a.clients,
        "seconds": a.seconds,
        "batch_wait_ms": a.batch_wait_ms,
        "image": f"{a.width}x{a.height} JPEG, {len(body)} bytes",
        "weights": str(a.weights or "untrained tiny_ssd, 256 px input"),
        "threshold": a.threshold,
        "device": batched.pop("device"),
    }
    baseline.pop("device")
    ratios = {
        "requests_per_s_ratio": round(batched["requests_per_s"] / baseline["requests_per_s"], 2)
        if baseline["requests_per_s"]
        else None,
        "p99_ratio": round(batched["latency_ms"]["p99"] / baseline["latency_ms"]["p99"], 2),
        "answers_equal": answers_equal,
    }
    emit({**config, "baseline": baseline, "batched": batched, **ratios}, a.out)


if __name__ == "__main__":
    main()
