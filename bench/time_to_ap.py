"""Minutes of training until val COCO AP >= 0.70 on the real bananas, per recipe.

    python bench/time_to_ap.py [--recipes chapter,default] [--target 0.70] [--out FILE]

Each recipe trains as ``tinyssd train --recipe NAME --stop-ap 0.70`` would:
its own epochs and schedule, evaluated after every epoch, stopping at the
first epoch whose val AP reaches the target. The figures are the sum of
training-epoch seconds (evaluation excluded) and the wall time (evaluation
included) until then; ``reached`` false means the recipe's last epoch came
first. Recipes:
  chapter: the chapter's settings (--recipe chapter: CE + L1, SGD lr 0.2, 20 epochs)
  chapter_fp32: the same in fp32 (the unoptimised numerics)
  default: tinyssd's default recipe
Skips (prints {"skipped": ...}) when ../shared/data/banana-detection is absent.
"""

from __future__ import annotations

import argparse

from _common import BANANAS, emit, train_metrics

RECIPES = {
    "chapter": {"recipe": "chapter"},
    "chapter_fp32": {"recipe": "chapter", "precision": "fp32"},
    "default": {"recipe": "default"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="chapter,default")
    p.add_argument("--target", type=float, default=0.70, help="val COCO AP to reach")
    p.add_argument("--out")
    a = p.parse_args()
    if not BANANAS.is_dir():
        emit({"skipped": f"{BANANAS} not found"}, a.out)
        return
    result: dict = {"target_AP": a.target, "recipes": {}}
    for name in a.recipes.split(","):
        rows, wall = train_metrics(data=str(BANANAS), stop_ap=a.target, **RECIPES[name])
        reached = rows[-1]["val_AP"] >= a.target
        result["recipes"][name] = {
            "settings": RECIPES[name],
            "reached": reached,
            "epochs": len(rows),
            "train_minutes": sum(r["seconds"] for r in rows) / 60,
            "wall_minutes": wall / 60,
            "final_AP": rows[-1]["val_AP"],
            "final_AP50": rows[-1]["val_AP50"],
        }
    emit(result, a.out)


if __name__ == "__main__":
    main()
