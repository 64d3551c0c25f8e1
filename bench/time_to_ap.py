"""Minutes of training until val AP50 >= 0.95 on the real bananas, per recipe.

    python bench/time_to_ap.py [--recipes chapter,best] [--max-epochs 20] [--out FILE]

Each recipe trains with ``tinyssd.train(stop_ap50=0.95)``, evaluating after
every epoch; the figure is the sum of training-epoch seconds (evaluation
excluded) and the wall time (evaluation included) until the first epoch whose
val AP50 reaches 0.95. Recipes:
  chapter: the chapter's settings (CE + L1, SGD lr 0.2, no momentum), tinyssd's fast path
  chapter_fp32: the same in fp32 (the unoptimised numerics)
  best: tinyssd's best recipe (see RECIPES)
Skips (prints {"skipped": ...}) when ../shared/data/banana-detection is absent.
"""

from __future__ import annotations

import argparse

from _common import BANANAS, emit, train_metrics

RECIPES = {
    "chapter": {},
    "chapter_fp32": {"precision": "fp32"},
    "best": {"batch_size": 16},  # twice the updates per epoch; same lr and loss
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="chapter,best")
    p.add_argument("--max-epochs", type=int, default=20)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--out")
    a = p.parse_args()
    if not BANANAS.is_dir():
        emit({"skipped": f"{BANANAS} not found"}, a.out)
        return
    result = {"target_AP50": a.target, "recipes": {}}
    for name in a.recipes.split(","):
        rows, wall = train_metrics(
            data=str(BANANAS), epochs=a.max_epochs, stop_ap50=a.target, **RECIPES[name]
        )
        reached = rows[-1]["val_AP50"] >= a.target
        result["recipes"][name] = {
            "settings": RECIPES[name],
            "reached": reached,
            "epochs": len(rows),
            "train_minutes": sum(r["seconds"] for r in rows) / 60,
            "wall_minutes": wall / 60,
            "final_AP50": rows[-1]["val_AP50"],
            "final_AP": rows[-1]["val_AP"],
        }
    emit(result, a.out)


if __name__ == "__main__":
    main()
