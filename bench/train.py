"""Training throughput: tinyssd vs the chapter's code, same model, batch 32, same run.

    python bench/train.py [--batches 12] [--out bench/results/train.json]

Prints JSON: images/s of the chapter's training step (d2l.multibox_target,
default layout, fp32, the process's default allocator) and of tinyssd's
(channels_last, batched labelling, heap-kept allocator; fp32 and bf16
autocast), their ratios, the chapter's step again under tinyssd's allocator
setting, and the roofline: fp32 2048^2 matmul GFLOP/s divided by the model's
forward+backward GFLOP per image, all from this run.
"""

from __future__ import annotations

import argparse

import torch
from _common import BANANAS, chapter_module, emit

from tinyssd.engine import benchmark as B
from tinyssd.matching import chapter_rows
from tinyssd.models import build_model


def banana_batches(n: int) -> list:
    """The first n batches of 32 real banana images (or random ones if absent)."""
    if not BANANAS.is_dir():
        return [B.synthetic_batch(32, 256, seed=i) for i in range(n)]
    from tinyssd.data import DetectionDataset, collate, load_split

    ds = DetectionDataset(load_split(BANANAS, "train"), 256)
    return [collate([ds[i] for i in range(k * 32, k * 32 + 32)]) for k in range(n)]


def chapter_train_step(chapter):
    """The chapter's training step on a fresh TinySSD with its SGD (lr 0.2, wd 5e-4)."""
    net = chapter.TinySSD(num_classes=1).train()
    trainer = torch.optim.SGD(net.parameters(), lr=0.2, weight_decay=5e-4)

    def step(images, targets):
        chapter.train_step(net, trainer, images.float(), chapter_rows(targets))

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=12, help="timed batches (+2 warm-up)")
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    batches = banana_batches(a.batches + 2)
    result = {"threads": torch.get_num_threads(), "batch_size": 32, "timed_batches": a.batches}
    result["matmul_gflops"] = B.matmul_gflops()  # first, on a quiet process

    chapter = chapter_module()
    if chapter is not None:
        step = chapter_train_step(chapter)
        result["chapter_images_per_s"] = B.images_per_second(step, batches)

    for precision in ("fp32", "bf16"):
        step = B.make_train_step(build_model("tiny_ssd", 1), precision)
        result[f"tinyssd_{precision}_images_per_s"] = B.images_per_second(step, batches)

    if chapter is not None:
        # make_train_step has applied tinyssd's allocator setting to this process:
        # how much of the gain is that setting alone, on the chapter's own code
        step = chapter_train_step(chapter)
        result["chapter_with_tinyssd_allocator_images_per_s"] = B.images_per_second(step, batches)

    result["train_gflop_per_image"] = B.train_step_gflop_per_image()
    result["roofline_images_per_s"] = result["matmul_gflops"] / result["train_gflop_per_image"]
    for precision in ("fp32", "bf16"):
        rate = result[f"tinyssd_{precision}_images_per_s"]
        result[f"tinyssd_{precision}_roofline_fraction"] = rate / result["roofline_images_per_s"]
        if "chapter_images_per_s" in result:
            result[f"speedup_{precision}_vs_chapter"] = rate / result["chapter_images_per_s"]
    emit(result, a.out)


if __name__ == "__main__":
    main()
