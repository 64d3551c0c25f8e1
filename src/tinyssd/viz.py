"""Pictures: detections drawn on images, grids of them, ground truth beside predictions,
training curves, the statistics of a data set's boxes and a model's anchors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
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


def draw_ground_truth(
    image: Tensor, boxes: Tensor, labels: Tensor, classes: Sequence[str]
) -> Image.Image:
    """``draw_detections`` for ground truth: each box with its class name, no score."""
    im = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    draw = ImageDraw.Draw(im)
    width = max(1, round(max(im.size) / 200))
    for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
        colour = _COLOURS[(int(label) - 1) % len(_COLOURS)]
        draw.rectangle(box, outline=colour, width=width)
        x, y = box[0], max(0.0, box[1] - 11)
        tb = draw.textbbox((x, y), classes[int(label) - 1])
        draw.rectangle(tb, fill=colour)
        draw.text((x, y), classes[int(label) - 1], fill="white")
    return im


def save_pairs(
    pairs: Sequence[tuple[Image.Image, Image.Image]],
    path: str | Path,
    titles: tuple[str, str],
    caption: str,
    side: int = 320,
) -> Path:
    """One row per image: its two pictures side by side (each fitted into ``side`` pixels),
    ``titles`` above the two columns, ``caption`` below (wrapped), as one PNG."""
    path = Path(path)
    font = ImageFont.load_default(size=14)
    text_h = 22
    lines = _wrap(caption, 2 * side // 8)
    shown = [[im.resize(_fitted(im.size, side)) for im in pair] for pair in pairs]
    heights = [max(im.height for im in pair) for pair in shown]
    grid = Image.new("RGB", (2 * side, text_h + sum(heights) + len(lines) * 18 + 8), "white")
    draw = ImageDraw.Draw(grid)
    for col, title in enumerate(titles):
        draw.text((col * side + 6, 4), title, fill="black", font=font)
    y = text_h
    for pair, height in zip(shown, heights, strict=True):
        for col, im in enumerate(pair):
            grid.paste(im, (col * side, y))
        y += height
    y += 4
    for line in lines:
        draw.text((6, y), line, fill="black", font=font)
        y += 18
    grid.save(path)
    return path


def _fitted(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(width, height) of ``size`` scaled so that its longer side is ``side``."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


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


def write_labels_picture(
    sized: Sequence[tuple[Any, tuple[int, int]]], classes: Sequence[str], path: str | Path
) -> Path:
    """``labels.png`` of a training set, written atomically: what ``data check --plots``
    and the start of a run draw.

    Args:
        sized: per image its record (``boxes`` Tensor[M, 4] xyxy pixels, ``labels``
            Tensor[M]) and its (height, width).
    """
    import torch

    from .boxes import normalise_boxes
    from .files import atomic_path

    kept = [(r, size) for r, size in sized if len(r.boxes)]
    boxes = [normalise_boxes(r.boxes, size).clamp(0, 1) for r, size in kept]
    labels = [r.labels for r, _ in kept]
    with atomic_path(path) as tmp:
        plot_labels(
            torch.cat(boxes) if boxes else torch.zeros(0, 4),
            torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64),
            classes,
            tmp,
            title=f"{len(sized)} training images",
        )
    return Path(path)


def plot_labels(
    boxes: Tensor, labels: Tensor, classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """``labels.png`` (Ultralytics' labels.jpg): boxes per class, where the box centres lie,
    box widths against heights, and up to 500 boxes drawn about one centre.

    Args:
        boxes (Tensor[N, 4]): normalised xyxy; labels (Tensor[N]) 1..C; ``classes[l - 1]``
            names label l.
    """
    import numpy as np
    from matplotlib.figure import Figure

    path = Path(path)
    xyxy = boxes.detach().cpu().double().numpy().reshape(-1, 4)
    label = labels.detach().cpu().numpy().reshape(-1).astype(int)
    wh = xyxy[:, 2:] - xyxy[:, :2]
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    fig = Figure(figsize=(9, 8))
    (bars, centres), (sizes, outlines) = fig.subplots(2, 2)
    counts = np.bincount(label, minlength=len(classes) + 1)[1:]
    colours = [_COLOURS[i % len(_COLOURS)] for i in range(len(classes))]
    bars.bar(range(len(classes)), counts, color=colours)
    bars.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 6 else 0)
    bars.set(ylabel="boxes", title=f"{len(label)} boxes in {title}" if title else "boxes")
    for values, ax, names in (
        (centre, centres, ("x centre", "y centre")),
        (wh, sizes, ("width", "height")),
    ):
        if len(values):
            ax.hist2d(values[:, 0], values[:, 1], bins=40, range=[[0, 1], [0, 1]], cmin=1)
        ax.set(xlabel=names[0], ylabel=names[1], xlim=(0, 1), ylim=(0, 1), aspect="equal")
    centres.invert_yaxis()  # image coordinates: y down
    sizes.set_title("box size (share of the image side)")
    centres.set_title("box centres")
    rng = np.random.default_rng(0)
    shown = rng.permutation(len(label))[:500]
    for i in shown.tolist():
        w, h = wh[i]
        colour = colours[(label[i] - 1) % len(colours)]
        outlines.add_patch(_rectangle((0.5 - w / 2, 0.5 - h / 2, 0.5 + w / 2, 0.5 + h / 2), colour))
    outlines.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", title="box shapes, centred")
    outlines.set_xticks([])
    outlines.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _rectangle(box: Sequence[float], colour: str, alpha: float = 0.3, **kw: Any):
    """A matplotlib outline of ``box`` (x1, y1, x2, y2)."""
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, alpha=alpha, **kw)


def plot_anchor_matches(
    image: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    level_anchors: Sequence[Tensor],
    matched: Tensor,
    classes: Sequence[str],
    path: str | Path,
    best_iou: Tensor | None = None,
    title: str = "",
) -> Path:
    """One image's anchors, level by level: per feature map, the anchors of the cell at the
    image centre (white, the shapes of that level) and the anchors matched to each
    ground-truth box (its class colour; the box itself red), with every box's count of
    positives. A box with no positive, or whose best anchor IoU (``best_iou``,
    Tensor[M]) is below 0.5 so that it has only the anchor the matching forces on it,
    is drawn dashed and named below: the model hardly learns it.

    Args:
        image (Tensor[3, H, W] uint8); gt_boxes (Tensor[M, 4]) normalised xyxy;
        gt_labels (Tensor[M]) 1..C; level_anchors: per level, Tensor[A_l, 4] normalised
        xyxy (``AnchorGenerator``'s order, so levels concatenate to A); matched
        (Tensor[A] int64): each anchor's box index, -1 for background
        (``matching.match_anchors`` of one image).
    """
    import numpy as np
    from matplotlib.figure import Figure

    path = Path(path)
    picture = image.permute(1, 2, 0).cpu().numpy()
    h, w = picture.shape[:2]
    scale = np.array([w, h, w, h], dtype=np.float64)
    gt = gt_boxes.detach().cpu().double().numpy().reshape(-1, 4) * scale
    names = [classes[int(label) - 1] for label in gt_labels.tolist()]
    positives = np.bincount(matched[matched >= 0].cpu().numpy(), minlength=len(gt))
    best = best_iou.cpu().numpy() if best_iou is not None else np.ones(len(gt))
    weak = (positives == 0) | (best < 0.5)
    columns = min(3, len(level_anchors))
    rows = (len(level_anchors) + columns - 1) // columns
    fig = Figure(figsize=(4 * columns, 4 * rows + 0.8))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    start = 0
    for level, (ax, anchors) in enumerate(zip(axes, level_anchors, strict=False)):
        anchors_px = anchors.detach().cpu().double().numpy() * scale
        mine = matched[start : start + len(anchors)].cpu().numpy()
        start += len(anchors)
        ax.imshow(picture)
        centres = (anchors_px[:, :2] + anchors_px[:, 2:]) / 2
        nearest = np.linalg.norm(centres - [w / 2, h / 2], axis=1)
        for box in anchors_px[nearest <= nearest.min() + 1e-6]:  # the centre cell's anchors
            ax.add_patch(_rectangle(box, "white", alpha=0.8, lw=1))
        for g, box in enumerate(gt):
            colour = _COLOURS[(int(gt_labels[g]) - 1) % len(_COLOURS)]
            ax.add_patch(_rectangle(box, "red", alpha=1, ls="--" if weak[g] else "-", lw=1.5))
            for a in np.flatnonzero(mine == g):
                ax.add_patch(_rectangle(anchors_px[a], colour, alpha=0.9, lw=1))
        cells = int(round(np.sqrt(len(np.unique(centres.round(3), axis=0)))))
        count = int(np.count_nonzero(mine >= 0))
        ax.set_title(f"level {level + 1}: {cells}x{cells} cells, {count} positives", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(level_anchors) :]:
        ax.set_visible(False)
    unmatched = [f"{names[g]} #{g + 1}" for g in np.flatnonzero(weak).tolist()]
    summary = ", ".join(
        f"{names[g]} #{g + 1}: {int(n)} (IoU {best[g]:.2f})" for g, n in enumerate(positives)
    )
    text = f"{title}\npositives per box (best anchor IoU): {summary or 'no boxes'}"
    if unmatched:
        text += f"\nno anchor with IoU >= 0.5: {', '.join(unmatched)} (dashed)"
    fig.suptitle(_short(text, 3), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _short(text: str, lines: int, width: int = 150) -> str:
    """``text`` in at most ``lines`` lines of ``width`` characters, cut with an ellipsis."""
    out = []
    for part in text.splitlines():
        out += _wrap(part, width)
    return "\n".join(out[:lines] + (["..."] if len(out) > lines else []))
