"""Anchor labelling and prediction ops: tinyssd against the chapter's d2l versions.

    python bench/ops.py [--out bench/results/ops.json] [--repeat 7] [--threads N]

Prints JSON: median milliseconds of ``multibox_target`` and ``multibox_detection``
for a batch of 32 over TinySSD's 5444 anchors, tinyssd's and d2l's in the same
run, and ``ratio`` = d2l / tinyssd (how many times faster tinyssd is).

- ``multibox_target``: 1-8 boxes per image, padded with class -1 rows to 8; d2l
  gets the same padded labels (that is how the chapter batches them).
- ``multibox_detection_realistic``: background dominates (object probability
  about 0.001) except 40 anchors per image, as from a trained model.
- ``multibox_detection_dense``: random logits, nearly every anchor above 0.01.
- ``anchor_labelling``: ``anchor_targets`` with each assigner on B x M boxes
  (32 x 1, 14, 100, 300; 1 x 1000, 5000: up to crowds of small objects), against
  the IoU table of the same boxes (``batched_box_iou``, B x M x 5444):
  ``<assigner>_per_iou_table`` = labelling time / table time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _common import emit

from tinyssd.anchors import AnchorGenerator
from tinyssd.boxes import batched_box_iou
from tinyssd.matching import anchor_targets, multibox_target
from tinyssd.models.config import tiny_ssd
from tinyssd.options import ASSIGNERS
from tinyssd.postprocess import multibox_detection

BATCH, MAX_BOXES = 32, 8
# (images, boxes per image) of the labelling entries
LABELLING_SHAPES = ((32, 1), (32, 14), (32, 100), (32, 300), (1, 1000), (1, 5000))


def median_ms(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def tiny_anchors() -> torch.Tensor:
    """TinySSD's anchors at 256 px, ``Tensor[5444, 4]``."""
    config = tiny_ssd()
    shapes = [(32, 32), (16, 16), (8, 8), (4, 4), (1, 1)]
    return AnchorGenerator(config.sizes, config.ratios)(shapes, "cpu")


def padded_labels(g: torch.Generator) -> torch.Tensor:
    """``Tensor[B, 8, 5]``: 1-8 boxes per image (sides 0.05-0.6), then class -1 rows."""
    labels = torch.full((BATCH, MAX_BOXES, 5), -1.0)
    for i in range(BATCH):
        m = int(torch.randint(1, MAX_BOXES + 1, (1,), generator=g))
        centre = torch.rand(m, 2, generator=g)
        half = (0.05 + 0.55 * torch.rand(m, 2, generator=g)) / 2
        boxes = torch.cat(((centre - half).clamp(0, 1), (centre + half).clamp(0, 1)), dim=1)
        labels[i, :m] = torch.cat((torch.zeros(m, 1), boxes), dim=1)
    return labels


def crowded_targets(g: torch.Generator, batch: int, num_boxes: int) -> torch.Tensor:
    """``anchor_targets``' rows ``Tensor[B, M, 5]``: class 1-3, sides 0.02-0.2, centres
    anywhere, no padding."""
    centre = torch.rand(batch, num_boxes, 2, generator=g)
    half = (0.02 + 0.18 * torch.rand(batch, num_boxes, 2, generator=g)) / 2
    boxes = torch.cat(((centre - half).clamp(0, 1), (centre + half).clamp(0, 1)), dim=-1)
    classes = torch.randint(1, 4, (batch, num_boxes, 1), generator=g).float()
    return torch.cat((classes, boxes), dim=-1)


def labelling(anchors: torch.Tensor, g: torch.Generator, repeat: int) -> dict:
    """``anchor_targets`` per assigner and the IoU table, ms, for each of LABELLING_SHAPES."""
    out = {}
    for batch, num_boxes in LABELLING_SHAPES:
        targets = crowded_targets(g, batch, num_boxes)
        table_ms = median_ms(lambda t=targets: batched_box_iou(anchors, t[..., 1:]), repeat, 1)
        entry = {"iou_table_ms": table_ms}
        for assigner in ASSIGNERS:
            ms = median_ms(
                lambda t=targets, a=assigner: anchor_targets(anchors, t, assigner=a), repeat, 1
            )
            entry[f"{assigner}_ms"] = ms
            entry[f"{assigner}_per_iou_table"] = ms / table_ms
        out[f"{batch}x{num_boxes}"] = entry
    return out


def predictions(g: torch.Generator, num_anchors: int, dense: bool):
    """Chapter-layout predictions: ``cls_probs`` Tensor[B, 2, A], offsets Tensor[B, 4A]."""
    logits = torch.randn(BATCH, num_anchors, 2, generator=g)
    if not dense:
        # object logit minus background logit ~ N(-7, 0.7): probability about e^-7 = 0.001
        logits = logits * 0.5
        logits[..., 0] += 7.0
        for i in range(BATCH):  # 40 anchors per image at probability 0.05-0.9
            hot = torch.randperm(num_anchors, generator=g)[:40]
            logits[i, hot, 1] += 4.0 + 5.0 * torch.rand(40, generator=g)
    cls_probs = logits.softmax(dim=-1).permute(0, 2, 1)
    offsets = 0.1 * torch.randn(BATCH, 4 * num_anchors, generator=g)
    return cls_probs, offsets


def compare(ours, theirs, repeat: int) -> dict:
    out = {"tinyssd_ms": median_ms(ours, repeat)}
    if theirs is not None:
        out["d2l_ms"] = median_ms(theirs, repeat)
        out["ratio"] = out["d2l_ms"] / out["tinyssd_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        from d2l import torch as d2l
    except ImportError as e:
        print(f"d2l baseline unavailable: {e}", file=sys.stderr)
        d2l = None

    g = torch.Generator().manual_seed(0)
    anchors = tiny_anchors()
    result = {
        "threads": torch.get_num_threads(),
        "batch": BATCH,
        "anchors": len(anchors),
        "repeat": a.repeat,
    }

    labels = padded_labels(g)
    result["multibox_target"] = compare(
        lambda: multibox_target(anchors[None], labels),
        d2l and (lambda: d2l.multibox_target(anchors[None], labels)),
        a.repeat,
    )
    result["multibox_target"]["boxes_per_image_mean"] = float((labels[..., 0] >= 0).sum()) / BATCH

    for case, dense in (("realistic", False), ("dense", True)):
        cls_probs, offsets = predictions(g, len(anchors), dense)
        entry = compare(
            lambda cls_probs=cls_probs, offsets=offsets: multibox_detection(
                cls_probs, offsets, anchors[None]
            ),
            d2l
            and (
                lambda cls_probs=cls_probs, offsets=offsets: d2l.multibox_detection(
                    cls_probs, offsets, anchors[None]
                )
            ),
            a.repeat,
        )
        above = cls_probs[:, 1:].amax(dim=1) >= 0.01
        entry["anchors_above_0.01_per_image_mean"] = float(above.sum()) / BATCH
        if d2l is not None:
            ours = multibox_detection(cls_probs, offsets, anchors[None])
            theirs = d2l.multibox_detection(cls_probs, offsets, anchors[None])
            entry["kept_rows_equal"] = all(
                torch.equal(o[o[:, 0] != -1], t[t[:, 0] != -1])
                for o, t in zip(ours, theirs, strict=True)
            )
        result[f"multibox_detection_{case}"] = entry
    result["anchor_labelling"] = labelling(anchors, g, a.repeat)
    emit(result, a.out)


if __name__ == "__main__":
    main()
