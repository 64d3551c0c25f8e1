"""Small data sets written by tests: no downloads, no ../shared needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tinyssd.data.bananas import write_bananas


def find_shared() -> Path:
    """The team's read-only ``shared/`` folder: $TINYSSD_SHARED, else ``../shared``
    beside the checkout, else /work/shared. Tests that need it skip when it is absent."""
    import os

    repo = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("TINYSSD_SHARED"), repo.parent / "shared", "/work/shared"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return repo.parent / "shared"


def write_tiny_bananas(
    root: Path, n_train: int = 24, n_val: int = 8, size: int = 64, seed: int = 0
) -> Path:
    """A banana-layout set: one bright rectangle per image on a noisy background."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            w, h = rng.integers(size // 5, size // 2, 2)
            x1, y1 = rng.integers(0, size - w), rng.integers(0, size - h)
            img[y1 : y1 + h, x1 : x1 + w] = (230, 200, 40)
            name = f"{i}.png"
            rows.append((name, 0, int(x1), int(y1), int(x1 + w), int(y1 + h)))
            folder = root / f"bananas_{split}" / "images"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / name)
        write_bananas(root, split, rows)
    return root


def save_untrained_checkpoint(path: Path, classes: list[str], image_size: int = 128) -> Path:
    """A checkpoint of a fresh TinySSD, as a training run would write it."""
    import torch

    from tinyssd.engine.checkpoint import save_checkpoint
    from tinyssd.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny_ssd", len(classes), image_size=image_size)
    config = {
        "model": "tiny_ssd",
        "num_classes": len(classes),
        "classes": classes,
        "ssd": model.config.to_dict(),
    }
    return save_checkpoint(path, model, config)
