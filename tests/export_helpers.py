"""What the ONNX tests share: a checkpoint with trained-like scores, comparing detections."""

from __future__ import annotations

from pathlib import Path

import torch

from tinyssd.checkpoint import save_checkpoint
from tinyssd.models import build_model

CLASSES = ["cat", "dog"]


def scored_checkpoint(path: Path, image_size: int) -> Path:
    """A fresh TinySSD with a trained model's kind of scores: mostly background (its
    bias raised), foreground scores spread from 0 to 1 (class logits scaled up)."""
    torch.manual_seed(0)
    model = build_model("tiny_ssd", len(CLASSES), image_size=image_size)
    with torch.no_grad():
        for head in model.cls_heads:
            head.weight *= 3
            head.bias.view(-1, len(CLASSES) + 1)[:, 0] += 6  # (a*K,) -> (a, K): background
    config = {
        "model": "tiny_ssd",
        "num_classes": len(CLASSES),
        "classes": CLASSES,
        "ssd": model.config.to_dict(),
    }
    return save_checkpoint(path, model, config)


def assert_same_detections(got: dict, want: dict, box_atol: float = 1e-4) -> None:
    """``got`` holds the rows of ``want`` (one image's ``boxes``, ``scores``, ``labels``),
    equal up to float rounding, by descending score; rows whose scores tie within
    rounding may come in either order."""
    boxes, scores, labels = (torch.as_tensor(got[k]) for k in ("boxes", "scores", "labels"))
    n = len(want["labels"])
    assert len(labels) == n, f"{len(labels)} detections, want {n}"
    if n == 0:
        return
    far = (boxes[:, None] - want["boxes"][None]).abs().amax(dim=-1)  # (n, n)
    far[labels[:, None] != want["labels"][None]] = torch.inf
    match = far.argmin(dim=1)  # got row i is want row match[i]
    assert sorted(match.tolist()) == list(range(n)), "not the same boxes and labels"
    assert far[torch.arange(n), match].max() <= box_atol
    torch.testing.assert_close(scores, want["scores"][match], rtol=1e-5, atol=1e-6)
    # a row out of its place has the score of the row in that place, within rounding
    torch.testing.assert_close(want["scores"][match], want["scores"], rtol=0, atol=1e-5)
