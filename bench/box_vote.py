"""COCO AP of one trained model without and with score voting, at several sigmas.

    python bench/box_vote.py [--data bananas|bccd|synthetic|DIR ...] [--weights RUN ...]
                             [--splits val,test] [--sigmas 0,0.025,0.05,0.1] [--out FILE]

Trains the default recipe once per ``--data`` (``--weights`` instead scores runs
you already have, one per data set, in the same order), then evaluates its
``last`` weights on each split with ``--box-vote`` 0 (off: NMS only) and each
sigma (``tinyssd.postprocess.vote_boxes``). Nothing but the post-processing
changes between the columns of a row, so they compare exactly; ``ratio`` is
each AP over the unvoted one. ``synthetic`` is ``make demo``'s set (24 epochs,
as the demo trains).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from _common import BANANAS, SHARED, emit

NAMED = {"bananas": BANANAS, "bccd": SHARED / "data" / "bccd" / "BCCD"}


def data_folder(name: str) -> tuple[Path, dict]:
    """The data set's folder and the training options it is trained with here."""
    if name == "synthetic":
        from tinyssd.data.synthetic import ensure_synthetic
        from tinyssd.options import DEMO_EPOCHS

        return ensure_synthetic(), {"epochs": DEMO_EPOCHS}
    return Path(NAMED.get(name, name)), {}


def score(weights: Path, data: Path, split: str, sigmas: list[float]) -> dict:
    """COCO AP / AP50 / AP75 of ``weights`` on ``split`` at each sigma (0: no voting)."""
    import tinyssd
    from tinyssd.data import DetectionDataset, load_split
    from tinyssd.evaluation import evaluate
    from tinyssd.inference import predict_dataset
    from tinyssd.postprocess import EVAL_POSTPROCESS

    det = tinyssd.load(weights, device="cpu", precision="fp32")
    dataset = DetectionDataset(load_split(data, split), det.image_size, None, tiling=det.tiling)
    targets = [dataset.targets_in_pixels(i) for i in range(len(dataset))]
    out = {}
    for sigma in sigmas:
        post = replace(EVAL_POSTPROCESS, box_vote=sigma)
        m = evaluate(predict_dataset(det.model, dataset, 32, det.device, post=post), targets)
        out[f"{sigma:g}"] = {k: round(m[k], 4) for k in ("AP", "AP50", "AP75")}
    base = out[f"{sigmas[0]:g}"]["AP"]
    for row in out.values():
        row["ratio"] = round(row["AP"] / base, 4) if base else None
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=["bananas", "bccd", "synthetic"])
    p.add_argument("--weights", nargs="+", help="trained runs, one per --data (no training)")
    p.add_argument("--splits", default="val,test", help="splits scored where the data has them")
    p.add_argument("--sigmas", default="0,0.025,0.05,0.1", help="the first is the baseline")
    p.add_argument("--out")
    a = p.parse_args()
    if a.weights and len(a.weights) != len(a.data):
        p.error("--weights: one run per --data")
    sigmas = [float(s) for s in a.sigmas.split(",")]

    import tinyssd
    from tinyssd.errors import DataError
    from tinyssd.options import DEFAULT_BOX_VOTE

    result: dict = {"default_box_vote": DEFAULT_BOX_VOTE, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(a.data):
            data, options = data_folder(name)
            if a.weights:
                weights = Path(a.weights[i]) / "last.safetensors"
            else:
                run = tinyssd.train(
                    data=str(data), out=f"{tmp}/{i}", progress=False, seed=0, **options
                )
                weights = Path(run) / "last.safetensors"
            scores = {}
            for split in a.splits.split(","):
                try:
                    scores[split] = score(weights, data, split, sigmas)
                except DataError as e:  # no such split
                    print(f"{name}: {split} skipped: {e}")
            result["sets"][name] = scores
    emit(result, a.out)


if __name__ == "__main__":
    main()
