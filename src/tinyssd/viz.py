"""Pictures: detections drawn on images, grids of them, training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw
from torch import Tensor

_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"]


def draw_detections(
    image: Tensor, boxes: Tensor, scores: Tensor, labels: Tensor, classes: Sequence[str]
) -> Image.Image:
    """The chapter's display: each box with its class name and score.

    Args:
        image (Tensor[3, H, W] uint8); boxes (Tensor[N, 4]) xyxy in its pixels;
        scores (Tensor[N]); labels (Tensor[N]) 1..C; ``classes[l - 1]`` names label l.
    """
    im = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(im)
    width = max(1, round(max(im.size) / 200))
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        colour = _COLOURS[(int(label) - 1) % len(_COLOURS)]
        draw.rectangle(box, outline=colour, width=width)
        text = f"{classes[int(label) - 1]} {score:.2f}"
        x, y = box[0], max(0.0, box[1] - 11)
        tb = draw.textbbox((x, y), text)
        draw.rectangle(tb, fill=colour)
        draw.text((x, y), text, fill="white")
    return im


def save_grid(images: Sequence[Image.Image], path: str | Path, columns: int = 4) -> Path:
    """Tile PIL images (resized to the first one's size) into one PNG."""
    path = Path(path)
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((i % columns) * w, (i // columns) * h))
    grid.save(path)
    return path


def plot_curves(rows: Sequence[dict], path: str | Path) -> Path:
    """The chapter's class-error and bbox-MAE curves (log scale) and val AP per epoch."""
    # a bare Figure draws with Agg without touching pyplot's global backend
    from matplotlib.figure import Figure

    path = Path(path)
    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [r["class_err"] for r in rows], label="class error")
    ax1.plot(epochs, [r["bbox_mae"] for r in rows], label="bbox mae", linestyle="--")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, name in (("val_AP50", "val AP50"), ("val_AP", "val AP (COCO)")):
        points = [(r["epoch"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if points:
            ax2.plot(*zip(*points, strict=True), marker="o", label=name)
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    if ax2.lines:  # no val metric yet (no val set or no evaluated epoch): nothing to label
        ax2.legend()
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
