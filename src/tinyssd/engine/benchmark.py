"""Speed on this machine: training images/s against the matmul roofline, predict latency.

Used by ``tinyssd bench`` and by the scripts in ``bench/``. Every figure is a
median over repeats measured in the same process, so ratios between them are
meaningful on a noisy machine; absolute numbers are for this machine only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from ..losses import MultiBoxLoss
from ..matching import anchor_targets
from ..models import build_model
from .allocator import keep_freed_memory
from .step import train_step


def matmul_gflops(n: int = 2048, repeats: int = 20) -> float:
    """fp32 GFLOP/s of an n x n matmul: the compute ceiling this machine offers torch.

    The best of ``repeats``: a ceiling is a peak, and on a shared machine the
    median mostly measures the neighbours.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times) / 1e9


def synthetic_batch(
    batch_size: int = 32, image_size: int = 256, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Random uint8 images with one random box each of class 1, as ``collate``'s rows."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(
        0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, generator=g
    )
    xy = torch.rand(batch_size, 1, 2, generator=g) * 0.6
    wh = torch.rand(batch_size, 1, 2, generator=g) * 0.3 + 0.1
    targets = torch.cat([torch.ones(batch_size, 1, 1), xy, xy + wh], dim=-1)
    return images, targets


def make_train_step(
    model: torch.nn.Module, precision: str = "fp32", lr: float = 0.2, compile: bool = False
) -> Callable[[Tensor, Tensor], None]:
    """tinyssd's training step (``engine.step.train_step``) with its own SGD optimiser,
    and the allocator setting ``tinyssd.train`` makes on the CPU."""
    keep_freed_memory()
    model = model.to(memory_format=torch.channels_last).train()
    # torch.compile gives a module an OptimizedModule (its stubs say only a callable)
    step_model = cast(torch.nn.Module, torch.compile(model)) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=5e-4)
    loss_fn = MultiBoxLoss()
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step(images: Tensor, targets: Tensor) -> None:
        train_step(step_model, loss_fn, optimizer, images, targets, dtype)

    return step


def images_per_second(
    step: Callable[[Tensor, Tensor], None],
    batches: list[tuple[Tensor, Tensor]],
    warmup: int = 2,
    repeats: int = 1,
) -> float:
    """Throughput of ``step`` over ``batches`` (after ``warmup`` batches), best of repeats."""
    for images, labels in batches[:warmup]:
        step(images, labels)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for images, labels in batches[warmup:]:
            step(images, labels)
            n += len(images)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def train_step_gflop_per_image(model_name: str = "tiny_ssd", image_size: int = 256) -> float:
    """FLOPs of one image's forward + backward pass (torch's flop counter), in GFLOP."""
    model = build_model(model_name, 1, image_size=image_size)
    images, targets = synthetic_batch(2, image_size)
    with FlopCounterMode(display=False) as counter:
        anchors, cls_logits, box_deltas = model(images.float())
        box_targets, box_mask, cls_targets = anchor_targets(anchors, targets)
        MultiBoxLoss()(cls_logits, cls_targets, box_deltas, box_targets, box_mask)[
            "loss"
        ].backward()
    return counter.get_total_flops() / 2 / 1e9


def predict_latency_ms(
    model: torch.nn.Module,
    image_size: int = 256,
    repeats: int = 30,
    batch: int = 1,
    precision: str = "fp32",
) -> float:
    """Median wall time of one prediction (forward + decode + NMS) of ``batch`` images."""
    from ..inference import autocast, predict_batch

    model = model.eval().to(memory_format=torch.channels_last)
    images = synthetic_batch(batch, image_size)[0].contiguous(memory_format=torch.channels_last)
    bf16 = precision == "bf16"

    def once() -> None:
        with torch.inference_mode(), autocast("cpu", torch.bfloat16 if bf16 else None):
            predict_batch(model, images, [(image_size, image_size)] * batch)

    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_benchmarks(quick: bool = False) -> dict:
    """The figures ``tinyssd bench`` prints for this machine."""
    torch.manual_seed(0)
    steps = 4 if quick else 10
    batches = [synthetic_batch(32, 256, seed=i) for i in range(steps + 2)]
    gflops = matmul_gflops()
    per_image = train_step_gflop_per_image()
    roofline = gflops / per_image
    result = {
        "threads": torch.get_num_threads(),
        "matmul_gflops": gflops,
        "train_gflop_per_image": per_image,
        "roofline_images_per_s": roofline,
    }
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            continue
        model = build_model("tiny_ssd", 1)
        rate = images_per_second(make_train_step(model, precision), batches)
        result[f"train_images_per_s_{precision}"] = rate
        result[f"roofline_fraction_{precision}"] = rate / roofline
        result[f"predict_ms_{precision}"] = predict_latency_ms(model, precision=precision)
    result["predict_batch32_images_per_s"] = 32e3 / predict_latency_ms(
        build_model("tiny_ssd", 1), batch=32, repeats=5
    )
    return result
