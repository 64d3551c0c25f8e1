"""The chapter's run on the real banana data set, shortened (skipped where the data is absent)."""

import csv

import pytest
from fixtures import find_shared

from tinyssd.cli import main

BANANAS = find_shared() / "data" / "banana-detection"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BANANAS.is_dir(), reason=f"real banana data not found at {BANANAS}"),
]


def test_four_epochs_of_the_chapters_recipe_learn_to_find_bananas(tmp_path):
    out = tmp_path / "bananas"
    args = ["train", "--data", str(BANANAS), "--epochs", "4", "--recipe", "chapter"]
    assert main([*args, "--out", str(out)]) == 0
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    err = [float(r["class_err"]) for r in rows]
    mae = [float(r["bbox_mae"]) for r in rows]
    assert err[-1] < err[0] and mae[-1] < mae[0]
    # the full 20-epoch run reaches AP50 0.98 (README); after 4 epochs it is well on the way
    assert float(rows[-1]["val_AP50"]) > 0.4
