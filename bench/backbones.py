"""Speed of every network preset on this machine: training images/s and predict latency.

    python bench/backbones.py [--models tiny_ssd,ssd_resnet18] [--batch-size 8] [--steps 3]
                              [--precision fp32,bf16] [--out bench/results/backbones.json]

Each preset at its own input size (``SSDConfig.image_size``), with random
weights (speed does not depend on them): training images/s of tinyssd's
training step (channels_last, SGD; the median over ``--steps`` batches after
one warm-up batch) and the median ms of one single-image prediction as
``tinyssd.load`` runs it (BatchNorm folded, channels_last, decode + NMS).
Prints JSON, one entry per preset, with its parameters and anchors.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import emit

from tinyssd.engine import benchmark as B
from tinyssd.models import PRESETS, build_model
from tinyssd.models.fuse import fold_batchnorm


def train_images_per_s(name: str, precision: str, batch_size: int, steps: int) -> float:
    """Median images/s of ``steps`` training steps after one warm-up step."""
    size = PRESETS[name]().image_size
    step = B.make_train_step(build_model(name, 1), precision, lr=0.01)
    batches = [B.synthetic_batch(batch_size, size, seed=i) for i in range(steps + 1)]
    step(*batches[0])
    rates = []
    for images, labels in batches[1:]:
        t0 = time.perf_counter()
        step(images, labels)
        rates.append(len(images) / (time.perf_counter() - t0))
    return statistics.median(rates)


def describe(name: str) -> dict:
    """Input side, parameters and anchors of a preset (one class)."""
    model = build_model(name, 1).eval()
    size = model.config.image_size
    with torch.no_grad():
        anchors = model(torch.zeros(1, 3, size, size))[0]
    return {
        "image_size": size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "anchors": anchors.shape[1],
    }


def bench(name: str, precisions: list[str], batch_size: int, steps: int, repeats: int) -> dict:
    row = describe(name)
    for precision in precisions:
        row[f"train_images_per_s_{precision}"] = train_images_per_s(
            name, precision, batch_size, steps
        )
        model = fold_batchnorm(build_model(name, 1))
        row[f"predict_ms_{precision}"] = B.predict_latency_ms(
            model, row["image_size"], repeats=repeats, precision=precision
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PRESETS), help="comma list of presets")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per preset")
    parser.add_argument("--repeats", type=int, default=10, help="timed predictions per preset")
    parser.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    precisions = args.precision.split(",")
    if "bf16" in precisions and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        precisions.remove("bf16")
    torch.manual_seed(0)
    result: dict = {"threads": torch.get_num_threads(), "batch_size": args.batch_size}
    for name in args.models.split(","):
        result[name] = bench(name, precisions, args.batch_size, args.steps, args.repeats)
    emit(result, args.out)


if __name__ == "__main__":
    main()
