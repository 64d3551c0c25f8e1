"""The built-in procedural data set: coloured shapes on cluttered backgrounds.

Written in the d2l banana layout (``bananas_{train,val}/label.csv`` +
``images/*.png`` and ``classes.txt``), so everything that reads the bananas
reads it. No external assets; the same seed gives the same bytes.

What an image holds:

- a background: a two-colour gradient, soft low-frequency colour noise with
  faint blurred blobs, faint thin lines and arcs of random colours, and fine
  pixel noise over everything. None of it is an object.
- 0 to ``MAX_OBJECTS`` objects (``EMPTY_FRACTION`` of the images are empty).
  Class ``k`` has one shape and one base colour (``SHAPES[k]``); each object's
  hue, saturation and brightness are jittered and ``OFF_PALETTE`` of them get
  a random hue, so colour alone is not enough and shape must be learnt.
  Object size (the geometric mean of width and height) is 8%-60% of the image
  side, aspect ratio w/h 0.5-2, with a shading gradient across the object.
  For large images with small objects (``bench/large_images.py``), ``objects``
  and ``object_px`` set how many (at most) and how large in pixels.
- occlusion: objects are painted in order and may overlap. An object that
  would be hidden by more than ``1 - MIN_VISIBLE`` of its area is not drawn
  at all, so every drawn object is labelled, and its box is the extent of its
  visible pixels (xyxy pixels, x2/y2 exclusive, label 0-based).
"""

from __future__ import annotations

import colorsys
import logging
import os
import re
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from .bananas import split_dir, write_bananas
from .base import DataError
from .dataset import cache_root

log = logging.getLogger(__name__)

# (class name, base hue in [0, 1)): class k is SHAPES[k]; classes=K takes the first K.
SHAPES = (
    ("disc", 0.0),  # red
    ("square", 0.62),  # blue
    ("triangle", 0.33),  # green
    ("star", 0.15),  # yellow
    ("ring", 0.80),  # purple
    ("diamond", 0.08),  # orange
)
MAX_OBJECTS = 4  # objects per image are 0..MAX_OBJECTS
EMPTY_FRACTION = 0.08  # share of images with no object
MIN_SCALE, MAX_SCALE = 0.08, 0.6  # object size sqrt(w*h) as a fraction of the image side
MIN_RATIO, MAX_RATIO = 0.5, 2.0  # object aspect ratio w / h
MIN_VISIBLE = 0.4  # objects with less of their area visible are not drawn
HUE_JITTER = 0.03  # std of the per-object hue shift
OFF_PALETTE = 0.15  # share of objects with a random hue
# PNG writing dominates the time: zlib level 1 with Huffman-only coding is faster than
# the default and, on these noisy images, smaller too (measured: ~95 kB per 256px image).
PNG_OPTIONS: dict[str, Any] = {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY}
WORKERS = min(4, os.cpu_count() or 1)  # threads: PNG encoding and numpy release the GIL
CACHE_VERSION = "v1"  # bump when the images change, so old caches are not reused

_STAR = [
    (0.5 + 0.5 * r * np.sin(a), 0.5 - 0.5 * r * np.cos(a))
    for i in range(10)
    for r, a in [(1.0 if i % 2 == 0 else 0.42, i * np.pi / 5)]
]


def make_synthetic(
    out_dir: str | Path,
    train: int = 1000,
    val: int = 100,
    classes: int = 3,
    seed: int = 0,
    size: int = 256,
    objects: int = MAX_OBJECTS,
    object_px: tuple[int, int] | None = None,
) -> Path:
    """Write the procedural data set into ``out_dir`` and return ``out_dir``.

    Args:
        train, val: number of images per split.
        classes: number of object classes, 1..6 (the first of ``SHAPES``).
        seed: images depend only on (seed, split, index), not on the counts.
        size: image side in pixels (square images).
        objects: at most this many objects per image (1..objects, or none).
        object_px: (smallest, largest) object size sqrt(w h) in pixels; None:
            ``MIN_SCALE``..``MAX_SCALE`` of ``size``.
    """
    if not 1 <= classes <= len(SHAPES):
        raise DataError(f"classes={classes}: the synthetic set has 1 to {len(SHAPES)} classes")
    if size < 32:
        raise DataError(f"size={size}: the synthetic images need at least 32 pixels a side")
    if object_px is not None and not 4 <= object_px[0] <= object_px[1] < size:
        raise DataError(f"object_px={object_px}: need 4 <= smallest <= largest < size {size}")
    if objects < 1:
        raise DataError(f"objects={objects}: at least 1")
    if train < 0 or val < 0 or seed < 0:
        raise DataError(f"train={train}, val={val}, seed={seed}: must not be negative")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classes.txt").write_text("".join(f"{n}\n" for n, _ in SHAPES[:classes]))
    for split_id, (split, count) in enumerate((("train", train), ("val", val))):
        images = split_dir(out_dir, split) / "images"
        images.mkdir(parents=True, exist_ok=True)
        _remove_stale_images(images, count)
        draw = partial(
            _write_image,
            images,
            size=size,
            classes=classes,
            objects=objects,
            object_px=object_px,
        )
        seeds = [[seed, split_id, i] for i in range(count)]
        with ThreadPoolExecutor(WORKERS) as pool:
            rows = [row for image_rows in pool.map(draw, range(count), seeds) for row in image_rows]
        write_bananas(out_dir, split, rows)
    log.info("wrote %d train + %d val synthetic images to %s", train, val, out_dir)
    return out_dir


def ensure_synthetic(cache_dir: str | Path | None = None, **kw) -> Path:
    """The synthetic set for ``make_synthetic(**kw)``, written once into a cache.

    The set lives in ``cache_dir/synthetic-v1-<params>``; ``cache_dir``
    defaults to :func:`tinyssd.data.dataset.cache_root`. It is written to a
    temporary folder and renamed when complete, so an interrupted run never
    leaves a set that looks complete; temporary folders of dead processes are
    removed.
    """
    params = {"train": 1000, "val": 100, "classes": 3, "seed": 0, "size": 256, **kw}
    unknown = set(params) - {"train", "val", "classes", "seed", "size"}
    if unknown:
        raise TypeError(f"ensure_synthetic: unknown arguments {sorted(unknown)}")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    name = "synthetic-{}-t{train}-v{val}-c{classes}-s{seed}-{size}px".format(
        CACHE_VERSION, **params
    )
    final = root / name
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(root, name)
    staging = root / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    log.info("writing the synthetic data set to %s (once)", final)
    try:
        make_synthetic(staging, **params)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists() and not _is_complete(final):
        shutil.rmtree(final)
    try:
        staging.rename(final)
    except OSError:
        if not _is_complete(final):
            raise
        shutil.rmtree(staging)  # another process finished first
    return final


def render_image(
    rng: np.random.Generator,
    size: int,
    classes: int,
    max_objects: int = MAX_OBJECTS,
    object_px: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One image and its objects (at most ``max_objects``, sized as ``make_synthetic`` says).

    Returns:
        pixels (ndarray[size, size, 3] uint8) and one ``(label, x1, y1, x2, y2)``
        per drawn object: label 0-based, box in pixels, x2/y2 exclusive.
    """
    image = _background(rng, size)
    count = 0 if rng.random() < EMPTY_FRACTION else int(rng.integers(1, max_objects + 1))
    layout = [_sample_object(rng, size, classes, object_px) for _ in range(count)]
    # Painting order decides occlusion: drop the objects hidden too much, then
    # the rest are at least MIN_VISIBLE visible (removing one only uncovers others).
    owner = _owner_map(layout, size)
    layout = [
        obj
        for k, obj in enumerate(layout)
        if _visible(owner, obj, k).sum() >= MIN_VISIBLE * obj.mask.sum()
    ]
    owner = _owner_map(layout, size)
    objects: list[tuple[int, int, int, int, int]] = []
    for k, obj in enumerate(layout):
        h, w = obj.mask.shape
        image[obj.y : obj.y + h, obj.x : obj.x + w][obj.mask] = obj.colour[obj.mask]
        rows, cols = np.nonzero(_visible(owner, obj, k))
        rows, cols = rows + obj.y, cols + obj.x
        x1, y1, x2, y2 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
        objects.append((obj.label, x1, y1, x2, y2))
    amplitude = int(rng.integers(2, 7))
    noise = rng.integers(-amplitude, amplitude + 1, (size, size, 3), dtype=np.int16)
    pixels = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return pixels, objects


def _write_image(
    folder: Path,
    index: int,
    seed: list[int],
    size: int,
    classes: int,
    objects: int = MAX_OBJECTS,
    object_px: tuple[int, int] | None = None,
) -> list[tuple[str, int, int, int, int, int]]:
    """Render image ``index`` from its own seed, save ``folder/<index>.png``, return its rows."""
    rng = np.random.default_rng(seed)
    pixels, drawn = render_image(rng, size, classes, objects, object_px)
    name = f"{index}.png"
    Image.fromarray(pixels).save(folder / name, **PNG_OPTIONS)
    return [(name, *obj) for obj in drawn]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + soft colour noise and blobs + faint lines and arcs: ``[S, S, 3]`` float32."""
    grey = rng.uniform(60, 190)
    ends = (grey + rng.uniform(-45, 45, (2, 3))).astype(np.float32)  # two muted colours
    angle = rng.uniform(0, 2 * np.pi)
    axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    t = float(np.cos(angle)) * axis[None, :] + float(np.sin(angle)) * axis[:, None] + 0.5
    image = ends[0] + t[..., None] * (ends[1] - ends[0])

    # Low-frequency noise and blobs drawn small and upsampled, so they have no sharp edges.
    low = max(4, size // 8)
    grid = Image.fromarray(rng.integers(0, 256, (low, low, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(grid)
    for _ in range(int(rng.integers(0, 5))):
        cx, cy, rx, ry = rng.uniform(0, low, 2).tolist() + rng.uniform(1, low / 5, 2).tolist()
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_rgb_int(rng.random(3) * 255))
    soft = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    image += (soft - np.float32(128)) * np.float32(rng.uniform(0.1, 0.35))

    # Faint lines and arcs: drawn in colour and, with the same geometry, into a coverage mask.
    clutter = Image.new("RGB", (size, size))
    cover = Image.new("L", (size, size))
    paint, mark = ImageDraw.Draw(clutter), ImageDraw.Draw(cover)
    for _ in range(int(rng.integers(2, 12))):
        x1, y1, x2, y2 = (rng.uniform(-0.1, 1.1, 4) * size).tolist()
        width, fill = int(rng.integers(1, 4)), _rgb_int(rng.random(3) * 255)
        if rng.random() < 0.7:
            for draw, ink in ((paint, fill), (mark, 255)):
                draw.line((x1, y1, x2, y2), fill=ink, width=width)
        else:
            box = (min(x1, x2), min(y1, y2), max(x1, x2) + 1, max(y1, y2) + 1)
            start = float(rng.uniform(0, 360))
            end = start + float(rng.uniform(60, 270))
            for draw, ink in ((paint, fill), (mark, 255)):
                draw.arc(box, start, end, fill=ink, width=width)
    covered = np.asarray(cover) > 0
    alpha = np.float32(rng.uniform(0.15, 0.45))
    image[covered] += alpha * (np.asarray(clutter)[covered] - image[covered])
    return image


class _Object(NamedTuple):
    """One object before painting."""

    label: int  # 0-based class
    x: int  # left column of its box
    y: int  # top row of its box
    mask: np.ndarray  # [h, w] bool: the shape's pixels in its box
    colour: np.ndarray  # [h, w, 3] float32: the shaded colour of each pixel


def _sample_object(
    rng: np.random.Generator, size: int, classes: int, object_px: tuple[int, int] | None = None
) -> _Object:
    """Draw class, size, aspect ratio, place and colour of one object."""
    label = int(rng.integers(classes))
    if object_px is None:
        scale = rng.uniform(MIN_SCALE, MAX_SCALE) * size
    else:
        scale = rng.uniform(*object_px)
    ratio = np.exp(rng.uniform(np.log(MIN_RATIO), np.log(MAX_RATIO)))
    w = int(np.clip(round(scale * np.sqrt(ratio)), 4, size - 1))
    h = int(np.clip(round(scale / np.sqrt(ratio)), 4, size - 1))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))

    hue = SHAPES[label][1] + rng.normal(0, HUE_JITTER)
    if rng.random() < OFF_PALETTE:
        hue = rng.random()
    rgb = np.array(colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0)))
    # Shading: brightness changes linearly across the object in a random direction.
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.35)
    u = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    v = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    shade = 1.0 + strength * (float(np.cos(angle)) * u + float(np.sin(angle)) * v)
    colour = np.clip(shade[..., None] * (rgb * 255).astype(np.float32), 0, 255)
    return _Object(label, x, y, _shape_mask(SHAPES[label][0], w, h), colour)


def _shape_mask(shape: str, w: int, h: int) -> np.ndarray:
    """The shape filling a ``w x h`` box: ``ndarray[h, w]`` bool."""
    canvas = Image.new("1", (w, h))
    draw = ImageDraw.Draw(canvas)
    r, b = w - 1, h - 1
    if shape == "disc":
        draw.ellipse((0, 0, r, b), fill=1)
    elif shape == "square":
        draw.rectangle((0, 0, r, b), fill=1)
    elif shape == "triangle":
        draw.polygon([(r / 2, 0), (r, b), (0, b)], fill=1)
    elif shape == "star":
        draw.polygon([(px * r, py * b) for px, py in _STAR], fill=1)
    elif shape == "ring":
        draw.ellipse((0, 0, r, b), outline=1, width=max(2, round(0.22 * min(w, h))))
    elif shape == "diamond":
        draw.polygon([(r / 2, 0), (r, b / 2), (r / 2, b), (0, b / 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _owner_map(layout: list[_Object], size: int) -> np.ndarray:
    """``ndarray[S, S]`` int: 1 + index of the object painted last at each pixel, 0 = none."""
    owner = np.zeros((size, size), dtype=np.int16)
    for k, obj in enumerate(layout):
        h, w = obj.mask.shape
        owner[obj.y : obj.y + h, obj.x : obj.x + w][obj.mask] = k + 1
    return owner


def _visible(owner: np.ndarray, obj: _Object, k: int) -> np.ndarray:
    """The pixels of object ``k`` still showing, in its box: ``ndarray[h, w]`` bool."""
    h, w = obj.mask.shape
    return owner[obj.y : obj.y + h, obj.x : obj.x + w] == k + 1


def _rgb_int(rgb: np.ndarray) -> tuple[int, int, int]:
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def _is_complete(root: Path) -> bool:
    return (root / "classes.txt").is_file() and all(
        (split_dir(root, s) / "label.csv").is_file() for s in ("train", "val")
    )


def _remove_stale_images(images: Path, count: int) -> None:
    """Delete ``<n>.png`` with n >= count left by an earlier, larger run (read as negatives)."""
    for path in images.glob("*.png"):
        if re.fullmatch(r"\d+", path.stem) and int(path.stem) >= count:
            path.unlink()


def _remove_dead_partials(root: Path, name: str) -> None:
    """Remove ``.<name>.partial-<pid>`` folders whose process is gone."""
    for path in root.glob(f".{name}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
