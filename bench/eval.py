"""COCO + VOC evaluation time: tinyssd.evaluation vs pycocotools on the same synthetic set.

    python bench/eval.py [--images 5000] [--dets 100] [--out bench/results/eval.json]

Builds a seeded set (5 classes, 1-10 boxes per image of all sizes, 2% crowd;
per image, jittered copies of the boxes and random boxes up to ``--dets``
detections), then times, in this run: ``tinyssd.evaluation.evaluate`` from
per-image dicts (COCO and VOC metrics), and pycocotools from its own
structures (``createIndex``, ``loadRes``, ``evaluate``, ``accumulate``,
``summarize``), and faster-coco-eval the same way if it is installed. Prints
JSON with both times, the speed-up and the largest difference between the
twelve summary numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import time

import numpy as np
from _common import emit

from tinyssd.evaluation import SUMMARY_KEYS, evaluate

NUM_CLASSES = 5
IMAGE_W, IMAGE_H = 640, 480


def synthetic(num_images: int, dets_per_image: int, seed: int = 0) -> tuple[list, list]:
    """Per-image prediction and target dicts (numpy, xyxy pixels) of a detector-like run."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(num_images):
        m = int(rng.integers(1, 11))
        wh = np.exp(rng.uniform(np.log(6), np.log(400), (m, 2)))
        xy = rng.uniform(0, 1, (m, 2)) * np.maximum([IMAGE_W, IMAGE_H] - wh, 1)
        gt = np.c_[xy, xy + wh]
        labels = rng.integers(1, NUM_CLASSES + 1, m)
        targets.append({"boxes": gt, "labels": labels, "iscrowd": rng.random(m) < 0.02})
        copies = rng.integers(0, 7, m)
        source = np.repeat(np.arange(m), copies)[:dets_per_image]
        near = gt[source] + rng.normal(0, 0.12, (len(source), 4)) * np.tile(wh[source], 2)
        near_labels = np.where(
            rng.random(len(source)) < 0.9, labels[source], rng.integers(1, NUM_CLASSES + 1)
        )
        n_far = dets_per_image - len(source)
        far_wh = np.exp(rng.uniform(np.log(6), np.log(300), (n_far, 2)))
        far_xy = rng.uniform(0, 1, (n_far, 2)) * ([IMAGE_W, IMAGE_H] - far_wh)
        boxes = np.r_[near, np.c_[far_xy, far_xy + far_wh]]
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = np.r_[rng.beta(5, 2, len(source)), rng.beta(1, 6, n_far)].astype(np.float32)
        predictions.append(
            {
                "boxes": boxes.astype(np.float32),
                "scores": scores,
                "labels": np.r_[near_labels, rng.integers(1, NUM_CLASSES + 1, n_far)],
            }
        )
    return predictions, targets


def coco_structures(predictions: list, targets: list) -> tuple[dict, list]:
    """The same data as a COCO ground-truth dataset dict and a result list (xywh)."""
    annotations, results = [], []
    for i, target in enumerate(targets):
        for box, label, crowd in zip(*(target[k].tolist() for k in ("boxes", "labels", "iscrowd"))):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    for i, pred in enumerate(predictions):
        boxes = pred["boxes"].astype(np.float64)
        xywh = np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]].tolist()
        for box, score, label in zip(xywh, pred["scores"].tolist(), pred["labels"].tolist()):
            results.append({"image_id": i + 1, "category_id": label, "bbox": box, "score": score})
    dataset = {
        "images": [{"id": i + 1} for i in range(len(targets))],
        "categories": [{"id": c} for c in range(1, NUM_CLASSES + 1)],
        "annotations": annotations,
    }
    return dataset, results


def pycocotools_gt(dataset: dict):
    """A pycocotools ``COCO`` of an in-memory dataset dict."""
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = dataset
    gt.createIndex()
    return gt


def time_cocoeval(make_gt, cocoeval_cls, dataset: dict, results: list) -> tuple[float, np.ndarray]:
    """Seconds and ``stats`` of a pycocotools-style ``COCO`` + ``COCOeval`` run, index included."""
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        gt = make_gt(dataset)
        run = cocoeval_cls(gt, gt.loadRes(results), "bbox")
        run.evaluate()
        run.accumulate()
        run.summarize()
        seconds = time.perf_counter() - t0
    return seconds, np.asarray(run.stats[:12])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--out")
    a = p.parse_args()
    predictions, targets = synthetic(a.images, a.dets)
    t0 = time.perf_counter()
    ours = evaluate(predictions, targets)
    tinyssd_s = time.perf_counter() - t0
    ours_stats = np.array([ours[k] for k in SUMMARY_KEYS])
    from pycocotools.cocoeval import COCOeval

    pycocotools_s, reference = time_cocoeval(
        pycocotools_gt, COCOeval, *coco_structures(predictions, targets)
    )
    result = {
        "images": a.images,
        "dets_per_image": a.dets,
        "gt_boxes": sum(len(t["labels"]) for t in targets),
        "tinyssd_s": round(tinyssd_s, 3),
        "pycocotools_s": round(pycocotools_s, 3),
        "speedup": round(pycocotools_s / tinyssd_s, 1),
        "max_abs_diff": float(np.abs(ours_stats - reference).max()),
        "AP": ours["AP"],
        "AP50": ours["AP50"],
        "VOC07_mAP": ours["VOC07_mAP"],
    }
    if importlib.util.find_spec("faster_coco_eval") is not None:
        from faster_coco_eval import COCO, COCOeval_faster

        # loadRes adds fields to the result dicts: give it fresh ones.
        dataset, results = coco_structures(predictions, targets)
        fast_s, fast_stats = time_cocoeval(COCO, COCOeval_faster, dataset, results)
        result["faster_coco_eval_s"] = round(fast_s, 3)
        result["faster_coco_eval_max_abs_diff"] = float(np.abs(fast_stats - reference).max())
    emit(result, a.out)


if __name__ == "__main__":
    main()
