"""Val AP50 on large images with small objects, trained whole and on tiles.

    python bench/large_images.py [--train 100 --val 20 --size 2000 --objects 30]
                                 [--object-px 20,40] [--tile auto] [--epochs N] [--out FILE]

Writes a synthetic set (``tinyssd.data.synthetic``: its shapes on cluttered
backgrounds) of ``--size`` x ``--size`` images holding up to ``--objects``
objects of ``--object-px`` pixels each, then trains the default recipe twice on
it: on the whole images shrunk to the input (``--tile 0``) and on tiles
(``--tile auto``, or the given size), and prints each run's val AP50 / AP (the
tiled run's val images predicted by tiles + whole, as ``tinyssd predict``
would), training minutes and the tile used. ``--epochs`` (default: the
recipe's step budget) and small counts make a quick smoke run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import emit, train_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=100, help="training images")
    p.add_argument("--val", type=int, default=20, help="val images")
    p.add_argument("--size", type=int, default=2000, help="image side in pixels")
    p.add_argument("--objects", type=int, default=30, help="at most this many per image")
    p.add_argument("--object-px", default="20,40", help="smallest,largest object side in px")
    p.add_argument("--tile", default="auto", help="the tiled run's --tile")
    p.add_argument("--epochs", type=int, help="epochs of each run (default: the recipe's)")
    p.add_argument("--batch-size", type=int, help="images per step (default: the recipe's)")
    p.add_argument("--data", help="write (or reuse) the set here (default: a temporary folder)")
    p.add_argument("--out")
    a = p.parse_args()

    from tinyssd.config import TrainConfig
    from tinyssd.data.synthetic import make_synthetic

    low, high = (int(v) for v in a.object_px.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data or Path(tmp) / "large")
        t0 = time.perf_counter()
        if not (data / "classes.txt").is_file():
            make_synthetic(
                data, a.train, a.val, size=a.size, objects=a.objects, object_px=(low, high)
            )
        result: dict = {
            "data": {
                "train": a.train,
                "val": a.val,
                "size": a.size,
                "objects": a.objects,
                "object_px": [low, high],
                "write_minutes": (time.perf_counter() - t0) / 60,
            },
            "runs": {},
        }
        common = {"data": str(data), "seed": 0}
        common |= {k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size)) if v}
        for name, tile in (("whole", "0"), ("tiles", a.tile)):
            tile_px = TrainConfig(**common, tile=tile, out=tmp).resolved().tile  # auto decided
            rows, wall = train_metrics(**common, tile=tile_px)
            result["runs"][name] = {
                "tile": tile_px,
                "val_AP50": rows[-1]["val_AP50"],
                "val_AP": rows[-1]["val_AP"],
                "epochs": len(rows),
                "train_minutes": sum(r["seconds"] for r in rows) / 60,
                "wall_minutes": wall / 60,
            }
    emit(result, a.out)


if __name__ == "__main__":
    main()
