"""The recipe's ablation: every part of tinyssd's default recipe removed, and added to the
chapter's, on the bananas and BCCD; fixed vs fitted anchors, augmentation parts, input
size, SSD300 and the Ultralytics YOLOv8n row — val COCO AP, AP50, AP75, training minutes.

    python bench/ablation.py                          # everything (hours on 2 CPU cores)
    python bench/ablation.py --data bananas --rows chapter,default,ema --epochs 8
    python bench/ablation.py --rows default,-atss,bccd:size384   # size384 on BCCD only

Writes docs/ABLATION.md (the table and the exact command) and prints JSON. Every row
trains from scratch with the seed 0 in this process, one after the other; "train min"
is the time spent in training steps (evaluation excluded), on this machine, in this run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _common import BANANAS, ROOT, SHARED, emit

DATASETS = {"bananas": BANANAS, "bccd": SHARED / "data" / "bccd" / "BCCD"}

# Each row: (name, what it is, TrainConfig overrides). "-X": the default recipe without X
# (X as the chapter has it); "+X": the chapter's recipe with X; "ema", "aug:*", "size384",
# "ssd300": the default recipe with that change.
ROWS: list[tuple[str, str, dict]] = [
    ("chapter", "the chapter's recipe (--recipe chapter)", {"recipe": "chapter"}),
    ("default", "tinyssd's default recipe", {}),
    ("-tiny_fpn", "TinySSD instead of the strided FPN network", {"model": "tiny_ssd"}),
    ("-adamw", "SGD (lr 0.02, momentum 0.9) instead of AdamW", {"optimizer": "sgd", "lr": 0.02}),
    ("-cosine", "constant rate, no warm-up", {"schedule": "constant", "warmup": 0}),
    ("ema", "default + an EMA of the weights (0.99; off by default)", {"ema": 0.99}),
    ("-focal_giou", "the chapter's CE + L1 loss", {"loss": "chapter", "class_prior": 0.0}),
    ("-no_decay_bn", "weight decay on BatchNorm and bias too", {"norm_bias_decay": True}),
    ("-auto_anchors", "the preset's fixed anchors", {"anchors": "fixed"}),
    ("-flip", "no augmentation", {"augment": "none"}),
    (
        "-atss",
        "the chapter's matching rule (IoU >= 0.5 + best) instead of ATSS",
        {"assigner": "max_iou"},
    ),
    ("-qfl", "the focal loss instead of the quality focal loss", {"loss": "focal_giou"}),
    ("p2", "default + a stride-4 map (tiny_fpn_p2)", {"model": "tiny_fpn_p2"}),
    ("steps1000", "default with a floor of 1000 steps instead of 500", {"min_steps": 1000}),
    ("size_auto", "default + --image-size auto", {"image_size": "auto"}),
    ("+tiny_fpn", "chapter + the FPN network", {"recipe": "chapter", "model": "tiny_fpn"}),
    (
        "+adamw_cosine",
        "chapter + AdamW, warm-up, cosine",
        {
            "recipe": "chapter",
            "optimizer": "adamw",
            "lr": 3e-3,
            "momentum": 0.9,
            "weight_decay": 0.05,
            "schedule": "cosine",
            "warmup": 30,
        },
    ),
    ("+ema", "chapter + EMA", {"recipe": "chapter", "ema": 0.99}),
    (
        "+focal_giou",
        "chapter + focal + GIoU loss",
        {"recipe": "chapter", "loss": "focal_giou", "class_prior": 0.01},
    ),
    ("+auto_anchors", "chapter + fitted anchors", {"recipe": "chapter", "anchors": "auto"}),
    ("+flip", "chapter + flips", {"recipe": "chapter", "augment": "flip"}),
    ("aug:bounded", "default + all anchor-bounded parts", {"augment": "bounded"}),
    ("aug:photometric", "default + photometric", {"augment": "bounded:photometric,flip"}),
    ("aug:expand", "default + bounded zoom-out", {"augment": "bounded:expand,flip"}),
    ("aug:crop", "default + centre-keeping crop", {"augment": "bounded:crop,flip"}),
    ("aug:ssd", "default + the paper's unbounded SSD augmentation", {"augment": "ssd"}),
    ("size384", "default at 384 px", {"image_size": 384}),
    ("ssd300", "SSD300-VGG16 with the default recipe", {"model": "ssd300_vgg16"}),
]


def train_row(data: Path, overrides: dict, epochs: int | None) -> dict:
    """Train one row from scratch; its val COCO metrics (the saved weights) and minutes."""
    import csv

    import torch

    import tinyssd
    from tinyssd.commands import evaluate_run

    with tempfile.TemporaryDirectory() as tmp:
        kw = {"data": str(data), "out": f"{tmp}/run", "progress": False, **overrides}
        if epochs is not None:
            kw["epochs"] = epochs
        t0 = time.perf_counter()
        run = tinyssd.train(**kw)
        wall = time.perf_counter() - t0
        with (run / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        config = json.loads((run / "config.json").read_text())["train"]
        metrics = evaluate_run(run / "last.safetensors", data, out=tmp, quiet=True)
    return {
        "epochs": len(rows),
        "threads": torch.get_num_threads(),
        "train_minutes": sum(float(r["seconds"]) for r in rows) / 60,
        "wall_minutes": wall / 60,
        "AP": metrics["AP"],
        "AP50": metrics["AP50"],
        "AP75": metrics["AP75"],
        "config": config,
    }


def peer_row(data: Path, epochs: int, image_size: int) -> dict | None:
    """Ultralytics YOLOv8n from scratch on the same data, or None if it is not installed."""
    import peer_ultralytics

    try:
        return peer_ultralytics.train_and_score(data, epochs=epochs, image_size=image_size)
    except peer_ultralytics.PeerUnavailable as e:
        print(f"Ultralytics row skipped: {e}", file=sys.stderr)
        return None


def epochs_for(spec: str | None, data_name: str) -> int | None:
    """``--epochs``: "12" for every data set, or "bananas=12,bccd=40"."""
    if not spec:
        return None
    if "=" not in spec:
        return int(spec)
    per = dict(item.split("=") for item in spec.split(","))
    return int(per[data_name]) if data_name in per else None


def markdown(results: list[dict], command: str) -> str:
    lines = [
        "# Ablation: what each part of the default recipe is worth",
        "",
        "Written by `bench/ablation.py`; every figure below comes from this one command,",
        "run on this project's 2-core CPU (seed 0, each row trained from scratch):",
        "",
        f"```bash\n{command}\n```",
        "",
        "`-X`: the default recipe without X (as the chapter has it); `+X`: the chapter's",
        "recipe with X. AP, AP50, AP75: val COCO metrics of the last weights (the EMA when on), by",
        "tinyssd's evaluator (equal to pycocotools). Train min: time in training steps;",
        "the machine is shared, so compare minutes within one table only.",
        "",
        "| data | row | what | epochs | threads | train min | AP | AP50 | AP75 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['data']} | {r['row']} | {r['what']} | {r['epochs']} | {r.get('threads', '')} | "
            f"{r['train_minutes']:.1f} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['AP75']:.3f} |"
        )
    ran = {r["row"] for r in results}
    missing = [name for name, _, _ in ROWS if name not in ran]
    if missing:
        lines += [
            "",
            f"Rows this command did not run: {', '.join(missing)}; "
            "`python bench/ablation.py` runs them all (hours on 2 cores).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="bananas,bccd", help="comma list of: bananas, bccd")
    p.add_argument(
        "--rows",
        default="all",
        help="comma list of row names (DATA:ROW: that data set only), or all",
    )
    p.add_argument(
        "--epochs",
        help="train every row this many epochs: N, or per data set (bananas=12,bccd=40); "
        "default: each recipe's own budget",
    )
    p.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument(
        "--peer-epochs",
        default="bananas=20,bccd=40",
        help="YOLOv8n's epochs, N or per data set; default: the settings its figures in "
        "issue 11 were measured with",
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "ABLATION.md"))
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "ablation.json"))
    a = p.parse_args()
    command = "python bench/ablation.py " + shlex.join(sys.argv[1:])
    wanted = None if a.rows == "all" else set(a.rows.split(","))
    unknown = {w.rpartition(":")[2] for w in wanted or ()} - {name for name, _, _ in ROWS}
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}")
    results = []
    for data_name in a.data.split(","):
        epochs = epochs_for(a.epochs, data_name)
        data = DATASETS[data_name]
        if not data.is_dir():
            print(f"{data}: absent, skipped", file=sys.stderr)
            continue
        if a.peer:  # first: the row every other row is compared with
            peer = peer_row(data, epochs_for(a.peer_epochs, data_name) or epochs or 40, 256)
            if peer is not None:
                what = (
                    f"Ultralytics YOLOv8n from scratch (yolov8n.yaml), same data and size, "
                    f"{peer['epochs']} epochs"
                )
                results.append({"data": data_name, "row": "yolov8n", "what": what, **peer})
                Path(a.out).write_text(markdown(results, command))
        for name, what, overrides in ROWS:
            if wanted is not None and not {name, f"{data_name}:{name}"} & wanted:
                continue
            row = train_row(data, overrides, epochs)
            results.append({"data": data_name, "row": name, "what": what, **row})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            Path(a.out).write_text(markdown(results, command))  # what is done so far
    emit({"command": command, "rows": results}, a.json)


if __name__ == "__main__":
    main()
