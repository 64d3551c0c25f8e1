"""``tinyssd train --tensorboard``: the epochs' numbers and the val picture as TensorBoard
event files in the run folder (``tensorboard --logdir runs``).

Scalars per epoch: ``train/loss``, ``train/cls_loss``, ``train/box_loss``,
``train/class_err``, ``train/bbox_mae``, ``train/lr``, ``val/AP50``, ``val/AP``,
``val/threshold`` and ``val_AP/<class>``; at the end, the image ``val_predictions``.
Needs the ``tensorboard`` package (``pip install 'tinyssd[tensorboard]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..extras import require

SCALARS = {
    "loss": "train/loss",
    "cls_loss": "train/cls_loss",
    "box_loss": "train/box_loss",
    "class_err": "train/class_err",
    "bbox_mae": "train/bbox_mae",
    "lr": "train/lr",
    "images_per_s": "train/images_per_s",
    "val_AP50": "val/AP50",
    "val_AP": "val/AP",
    "val_threshold": "val/threshold",
}


class TensorBoardLog:
    """A ``SummaryWriter`` on the run folder; UsageError naming the extra when missing."""

    def __init__(self, folder: Path) -> None:
        require("tensorboard", "tensorboard")  # torch's writer needs it; say which extra
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One metrics row (``metrics.csv``'s, with ``lr`` and ``val_class_AP``) at its epoch."""
        epoch = int(row["epoch"])
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, float(row[key]), epoch)
        for name, ap in (row.get("val_class_AP") or {}).items():
            self.writer.add_scalar(f"val_AP/{name}", float(ap), epoch)
        self.writer.flush()

    def add_picture(self, tag: str, path: Path, step: int = 0) -> None:
        """A PNG the run wrote, as a TensorBoard image."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
