"""Memory and speed of training as the data set grows: --cache none against --cache ram.

    python bench/scale.py [--sizes 2000 20000] [--data-dir /tmp/tinyssd-scale]
                          [--out bench/results/scale.json]

For each size a synthetic set (``make_synthetic``: N train + 10 val images,
256 px; written once into --data-dir, the time it took reported) is trained
for one epoch with ``--cache none`` (images decoded in DataLoader workers), and
the smallest also with ``--cache ram`` (decoded once, stacked). Each training
runs in a fresh subprocess and reports its peak RSS (``ru_maxrss`` of the
process, and of its loader workers) and the epoch's images/s (wall time of
the epoch, data loading included). Prints JSON with the goals: the largest set's
peak RSS within 1.2x of the smallest's, and ``none`` >= 90% of ``ram``'s images/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import emit


def make_set(data_dir: Path, size: int) -> tuple[Path, float | None]:
    """The synthetic set of ``size`` train images, and the seconds writing it took (None: there)."""
    from tinyssd.data.synthetic import make_synthetic

    root = data_dir / f"synth-{size}"
    done = root / "complete"
    if done.is_file():
        return root, None
    t0 = time.perf_counter()
    make_synthetic(root, train=size, val=10)
    done.touch()
    return root, time.perf_counter() - t0


def child(
    data: str, cache: str, batch_size: int, workers: int | None, max_images: int | None
) -> None:
    """One epoch of ``tinyssd.train`` (or its first ``max_images``), timed; prints one JSON
    line (runs in a fresh process)."""
    import itertools
    import logging
    import tempfile

    import tinyssd.engine.train as train_module

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # the choices made

    epoch_times: list[float] = []
    trained: list[int] = []  # images the epoch trained on
    timed_epoch = train_module.train_one_epoch

    def timed(fit, batch_iter, *args, **kwargs):
        if max_images is not None:
            batch_iter = itertools.islice(batch_iter, -(-max_images // batch_size))
        t0 = time.perf_counter()
        row = timed_epoch(fit, batch_iter, *args, **kwargs)
        epoch_times.append(time.perf_counter() - t0)
        trained.append(round(row["images_per_s"] * row["seconds"]))
        return row

    train_module.train_one_epoch = timed
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = train_module.train(
            data=data, out=f"{tmp}/run", epochs=1, batch_size=batch_size, cache=cache,
            workers=workers, progress=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        set_images = sum(1 for _ in (Path(data) / "bananas_train" / "images").iterdir())
        rows = (run / "metrics.csv").read_text().splitlines()
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(
        json.dumps(
            {
                "set_images": set_images,
                "trained_images": trained[0],
                "epoch_s": round(epoch_times[0], 2),
                "images_per_s": round(trained[0] / epoch_times[0], 2),
                "wall_s": round(wall, 2),
                "peak_rss_mb": round(self_kb / 1024, 1),
                "peak_rss_children_mb": round(workers_kb / 1024, 1),  # loader workers
                "metrics_row": rows[-1],
            }
        )
    )


def measure(data: Path, cache: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data), cache, "--batch-size",
           str(args.batch_size)]  # fmt: skip
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.max_images is not None:
        cmd += ["--max-images", str(args.max_images)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    result = {"cache": cache, **json.loads(done.stdout.strip().splitlines()[-1])}
    result["log"] = [
        line.split(": ", 1)[-1]
        for line in done.stderr.splitlines()
        if "loader worker" in line or "--cache" in line
    ]
    print(json.dumps(result), file=sys.stderr)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--data-dir", default="/tmp/tinyssd-scale")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="default: tinyssd's own")
    p.add_argument(
        "--max-images", type=int, default=None, help="train only the first N images of each epoch"
    )
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=2, metavar=("DATA", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(*args.child, args.batch_size, args.workers, args.max_images)
        return
    sizes = sorted(args.sizes)
    runs, generated = [], {}
    for n in sizes:
        root, seconds = make_set(Path(args.data_dir), n)
        generated[n] = None if seconds is None else round(seconds, 1)
        caches = ("ram", "none") if n == sizes[0] else ("none",)
        runs += [{"size": n, **measure(root, cache, args)} for cache in caches]
    small = {r["cache"]: r for r in runs if r["size"] == sizes[0]}
    largest = next(r for r in runs if r["size"] == sizes[-1] and r["cache"] == "none")
    rss_ratio = largest["peak_rss_mb"] / small["none"]["peak_rss_mb"]
    speed_ratio = small["none"]["images_per_s"] / small["ram"]["images_per_s"]
    emit(
        {
            "sizes": sizes,
            "max_images": args.max_images,  # None: whole epochs
            "generate_s": generated,  # None: the set was already there
            "runs": runs,
            "rss_largest_over_smallest_none": round(rss_ratio, 3),
            "rss_goal_met": rss_ratio <= 1.2,
            "none_over_ram_images_per_s": round(speed_ratio, 3),
            "speed_goal_met": speed_ratio >= 0.9,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
