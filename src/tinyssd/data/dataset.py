"""A torch Dataset over records, batched as target rows (class 1..C); images held
in RAM, on disk, or decoded when read.

Where the decoded pixels live is the ``cache``:

- ``ram``: every image decoded once at construction and held as uint8 (fast; the
  set must fit in memory);
- ``disk``: decoded once into ``.npy`` files of the cache folder (:func:`cache_root`,
  one sub-folder per data root and image size; never the data folder), read back
  on every later access; a file whose image changed (modification time or size),
  or that is not the uint8 image it should be (shape, dtype), is rebuilt;
- ``none``: decoded from the image file on every access (least memory).

``auto`` (:func:`resolve_cache`) takes ``ram`` when the decoded set fits
:func:`ram_budget`, else ``none``.

A record with a ``window`` (a tile, :func:`tinyssd.data.tiles.tile_split`) is that
crop of its image, cut at native resolution after decoding; with ``ram`` each
image is decoded once for all its tiles, and ``disk`` keeps the whole image.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..boxes import normalise_boxes
from ..files import atomic_path
from ..images import resize_image
from ..tiling import Tiling
from .base import DataError, Record, Report, Split, clip_to_image, image_size, read_image
from .limits import DataLimits

log = logging.getLogger(__name__)

# (image uint8 [3, H, W], boxes [M, 4] xyxy pixels, labels [M]) ->
# (image uint8 [3, S, S], boxes [M', 4] xyxy normalised to [0, 1], labels [M'])
Transform = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]

CACHES = ("auto", "ram", "disk", "none")
RAM_SHARE = 0.25  # ``auto`` holds the set in RAM up to this share of the available memory ...
RAM_CAP = 4 << 30  # ... and never more than this many bytes


def hflip_boxes(boxes: Tensor, width: float = 1.0) -> Tensor:
    """Boxes of an image ``width`` wide, mirrored left-right: the one flip of boxes.

    Args:
        boxes (Tensor[..., 4]): xyxy, in pixels (``width``: the image's) or normalised (1).
    Returns:
        Tensor[..., 4]: ``(width - x2, y1, width - x1, y2)``.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def hflip(image: Tensor, boxes: Tensor, width: float = 1.0) -> tuple[Tensor, Tensor]:
    """An image ``Tensor[..., H, W]`` mirrored left-right, with its boxes (:func:`hflip_boxes`)."""
    return image.flip(-1), hflip_boxes(boxes, width)


def normalised_boxes(split: Split, limits: DataLimits | None = None) -> Tensor:
    """Every box of ``split`` as normalised xyxy ``Tensor[N, 4]``, clamped to [0, 1].

    Image sizes come from the records, else from the image headers (``limits``'
    pixel budget); boxes of unreadable images are left out (the dataset reports them).
    """
    out = []
    for rec in split.records:
        if not len(rec.boxes):
            continue
        try:
            size = rec.size or image_size(rec.image, limits)
        except DataError:
            continue
        out.append(normalise_boxes(rec.boxes, size).clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, 4)


def _held_size(rec: Record) -> tuple[int, int]:
    """(height, width) of a record the dataset holds: ``clip_to_image`` set it."""
    assert rec.size is not None
    return rec.size


def available_memory() -> int:
    """Bytes of memory available to new allocations (``MemAvailable`` of /proc/meminfo)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def ram_budget() -> int:
    """Bytes of decoded images ``cache="auto"`` keeps in RAM: min(25% of available, 4 GiB)."""
    return min(int(RAM_SHARE * available_memory()), RAM_CAP)


def resolve_cache(cache: str, decoded_bytes: int, what: str = "the data set") -> str:
    """``ram``, ``disk`` or ``none``: ``cache`` itself, or for ``auto`` ``ram`` when
    ``decoded_bytes`` fits :func:`ram_budget`, else ``none`` (logged, with the reason)."""
    if cache not in CACHES:
        raise ValueError(f"cache {cache!r}: choose from {', '.join(CACHES)}")
    if cache != "auto":
        return cache
    budget = ram_budget()
    chosen = "ram" if decoded_bytes <= budget else "none"
    log.info(
        "--cache auto: %s decodes to %.1f MiB, %s the RAM budget of %.1f MiB "
        "(min(25%% of available memory, 4 GiB)): --cache %s",
        what,
        decoded_bytes / 2**20,
        "within" if chosen == "ram" else "over",
        budget / 2**20,
        chosen,
    )
    return chosen


def cache_root() -> Path:
    """tinyssd's cache folder (decoded images, the synthetic data set): ``$TINYSSD_CACHE``,
    else ``$XDG_CACHE_HOME/tinyssd``, else ``~/.cache/tinyssd``."""
    if os.environ.get("TINYSSD_CACHE"):
        return Path(os.environ["TINYSSD_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tinyssd"


def disk_cache_dir(data_root: str | Path, stored_size: int | None) -> Path:
    """The ``.npy`` folder of one data root at one stored size (None: full resolution)."""
    key = f"{Path(data_root).resolve()}|{stored_size or 'full'}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_root() / "images" / f"{Path(data_root).name}-{digest}"


class DiskCache:
    """Decoded images as ``.npy`` files, one per image, keyed by path, mtime and size.

    ``load(path, decode, size)`` returns the cached ``Tensor[3, H, W]`` uint8, or
    calls ``decode(path)`` and stores its result (atomically: a temporary file
    renamed). A changed image gets a new key: its old file is removed. An entry
    that is not ``uint8 [3, H, W]`` (of ``size``, when given), or does not load,
    is rebuilt the same way, and counted in ``rebuilt`` and a log line.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.rebuilt = 0  # entries found bad and rebuilt, in this process

    def file_for(self, path: Path) -> Path:
        st = os.stat(path)
        stem = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
        stamp = hashlib.sha1(f"{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()[:12]
        return self.folder / f"{stem}-{stamp}.npy"

    def load(
        self, path: Path, decode: Callable[[Path], Tensor], size: tuple[int, int] | None = None
    ) -> Tensor:
        """The image at ``path`` as ``Tensor[3, H, W]`` uint8, from the cache or decoded.

        Args:
            size: (H, W) the entry must have; None: any.
        """
        try:
            cached = self.file_for(path)
        except OSError as e:
            raise DataError(f"{path}: image file not readable ({e.strerror})") from None
        problem = None  # stays None when the image is not cached yet
        try:
            held = np.load(cached)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, EOFError) as e:
            problem = f"does not load ({type(e).__name__})"
        else:
            problem = entry_problem(held, size)
            if problem is None:
                return torch.from_numpy(held)
        if problem is not None:
            self.rebuilt += 1
            log.warning(
                "%s: disk cache entry %s %s: rebuilt (%d bad entries rebuilt so far)",
                path,
                cached.name,
                problem,
                self.rebuilt,
            )
        image = decode(path)
        self._store(cached, image)
        return image

    def _store(self, cached: Path, image: Tensor) -> None:
        stem = cached.name.split("-")[0]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached, fsync=False) as tmp:  # a cache: losing it costs a decode
                np.save(tmp, image.numpy())
            for stale in self.folder.glob(f"{stem}-*.npy"):
                if stale != cached:
                    stale.unlink(missing_ok=True)
        except OSError as e:
            log.warning("%s: image cache not written (%s); decoding each time", cached, e)


def entry_problem(held: np.ndarray, size: tuple[int, int] | None) -> str | None:
    """Why a disk-cache entry is not an image ``uint8 [3, H, W]`` (``(H, W) == size``
    when given), or None.

    Example: an array ``float32 [64, 64, 3]`` gives ``"is float32 (64, 64, 3), not
    uint8 (3, H, W)"``.
    """
    shape = tuple(held.shape)
    expected = "(3, H, W)" if size is None else str((3, *size))
    fits = len(shape) == 3 and shape[0] == 3 and (size is None or shape[1:] == tuple(size))
    if held.dtype == np.uint8 and fits:
        return None
    return f"is {held.dtype} {shape}, not uint8 {expected}"


class LazyImages(Sequence):
    """The images of a data set, decoded (or read from the disk cache) when indexed."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.records)

    def __getitem__(self, i: int) -> Tensor:  # type: ignore[override]
        return self.dataset.load_image(i)


class DetectionDataset(torch.utils.data.Dataset):
    """Images with their targets; decoded pixels held as ``cache`` says (module docstring).

    ``dataset[i]`` is ``(image, target)``: image ``Tensor[3, S, S]`` uint8 and
    target ``{"boxes": Tensor[M, 4] normalised xyxy, "labels": Tensor[M] 1..C}``.
    Unreadable images are reported and left out (with ``disk``/``none`` from
    their headers: an image that fails to decode later raises DataError, which
    ``engine.inputs.read_batches`` counts and skips); boxes are clipped to the image
    (reported). ``targets_in_pixels(i)`` gives what evaluation needs. ``limits``
    (None: ``DataLimits.from_env()``, read once here) bounds every decode, in
    loader workers too: they get it pickled with the dataset.

    Without a ``transform`` images are resized to S once, when decoded. ``images``
    is a list (``ram``) or a sequence that decodes when indexed. With ``tiling`` (the
    val set of a model trained on tiles) images are held at full resolution for
    ``inference.predict_dataset`` to predict by tiles; ``dataset[i]`` stays S x S.
    """

    def __init__(
        self,
        split: Split,
        image_size: int = 256,
        transform: Transform | None = None,
        report: Report | None = None,
        *,
        cache: str = "ram",
        limits: DataLimits | None = None,
        tiling: Tiling | None = None,
    ) -> None:
        self.classes = split.classes
        self.tiling = tiling
        # held as decoded (or cropped), not resized to S: for the transform, or to cut tiles
        self.full_resolution = transform is not None or tiling is not None
        self.limits = limits or DataLimits.from_env()
        self.image_size = image_size
        self.transform = transform
        self.report = report if report is not None else Report()
        self.records: list[Record] = []
        self.images: Sequence[Tensor] = []
        self.disk: DiskCache | None = None
        self.disk_whole = False  # the disk cache holds whole decoded images (to cut or keep)
        self.failed_reads: list[str] = []  # images that failed to decode in a loader
        if cache == "ram":
            self._read_all(split)
        else:
            self._read_headers(split)
        self.cache = resolve_cache(cache, self.decoded_bytes(), str(split.root))
        if self.cache == "ram" and cache != "ram":
            self._decode_kept()
        if self.cache == "disk":
            self.disk_whole = self.full_resolution or any(r.window for r in self.records)
            stored_size = None if self.disk_whole else image_size
            self.disk = DiskCache(disk_cache_dir(split.root, stored_size))
        if self.cache != "ram":
            self.images = LazyImages(self)
        skipped = len(split.records) - len(self.records)
        if skipped:
            log.warning("%s: skipped %d unreadable image(s)", split.root, skipped)

    def _read_all(self, split: Split) -> None:
        """Records and their images, every image decoded now."""
        images = []
        decoded: tuple[Path, Tensor] | None = None  # the tiles of an image are consecutive
        for rec in split.records:
            try:
                if decoded is None or decoded[0] != rec.image:
                    decoded = (rec.image, read_image(rec.image, self.limits))
                image = _crop(decoded[1], rec)
            except DataError as e:
                self.report.add_unreadable(rec.image, e)
                continue
            h, w = image.shape[-2:]
            self.records.append(clip_to_image(rec, (int(h), int(w)), self.report))
            images.append(self._stored(image))
        self.images = images

    def _decode_kept(self) -> None:
        """The images of the records read from headers, decoded now (those that fail dropped)."""
        records, images = [], []
        decoded: tuple[Path, Tensor] | None = None
        for rec in self.records:
            try:
                if decoded is None or decoded[0] != rec.image:
                    decoded = (rec.image, read_image(rec.image, self.limits))
                images.append(self._stored(_crop(decoded[1], rec)))
            except DataError as e:
                self.report.add_unreadable(rec.image, e)
                continue
            records.append(rec)
        self.records, self.images = records, images

    def _read_headers(self, split: Split) -> None:
        """Records whose image header reads (size after EXIF); nothing decoded."""
        for rec in split.records:
            try:
                size = image_size(rec.image, self.limits)
                if rec.window is not None:
                    size = _window_size(rec, size)
            except DataError as e:
                self.report.add_unreadable(rec.image, e)
                continue
            self.records.append(clip_to_image(rec, size, self.report))

    def _stored(self, image: Tensor) -> Tensor:
        """What is held for a decoded image (or tile): resized to S, or as is for the transform
        or ``tiling``."""
        return image if self.full_resolution else resize_image(image, self.image_size)

    def _decode(self, path: Path) -> Tensor:
        return self._stored(read_image(path, self.limits))

    def _read(self, path: Path) -> Tensor:
        return read_image(path, self.limits)

    def decoded_bytes(self) -> int:
        """Bytes the held images take (uint8): 3*S*S each, or 3*H*W with a transform."""
        if not self.full_resolution:
            return len(self.records) * 3 * self.image_size**2
        return sum(3 * h * w for h, w in map(_held_size, self.records))

    def load_image(self, i: int) -> Tensor:
        """Image i as held: ``Tensor[3, S, S]`` uint8 (or ``[3, H, W]`` with a transform).

        Raises:
            DataError: the file no longer decodes (or changed size since the header was read).
        """
        if self.cache == "ram":
            return self.images[i]
        rec = self.records[i]
        if self.disk is not None and not self.disk_whole:
            size = (self.image_size, self.image_size)
            image = self.disk.load(rec.image, self._decode, size)  # held resized to S
        elif self.disk is not None:  # the whole image cached, then cut to the record's window
            whole = None if rec.window else rec.size  # a tile's record has the tile's size
            image = self._stored(_crop(self.disk.load(rec.image, self._read, whole), rec))
        else:
            image = self._stored(_crop(self._read(rec.image), rec))
        if self.full_resolution and tuple(image.shape[-2:]) != rec.size:
            raise DataError(f"{rec.image}: image is now {tuple(image.shape[-2:])}, was {rec.size}")
        return image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        rec, image = self.records[i], self.load_image(i)
        if self.transform is None:
            boxes = normalise_boxes(rec.boxes, _held_size(rec))
            return resize_image(image, self.image_size), {"boxes": boxes, "labels": rec.labels}
        image, boxes, labels = self.transform(image, rec.boxes, rec.labels)
        return image, {"boxes": boxes, "labels": labels}

    def targets_in_pixels(self, i: int) -> dict[str, Tensor]:
        """Ground truth of image i in its original pixels (the evaluation's target dict)."""
        rec = self.records[i]
        return {
            "boxes": rec.boxes,
            "labels": rec.labels,
            "difficult": rec.difficult,
            "iscrowd": rec.iscrowd,
        }


def _window_size(rec: Record, size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a record's window inside an image of ``size``; DataError when the
    window does not fit (the image changed since the tiles were cut)."""
    assert rec.window is not None
    x0, y0, x1, y1 = rec.window
    if x1 > size[1] or y1 > size[0]:
        raise DataError(f"{rec.image}: tile {rec.window} outside the {size[1]}x{size[0]} image")
    return y1 - y0, x1 - x0


def _crop(image: Tensor, rec: Record) -> Tensor:
    """The record's window of a decoded ``Tensor[3, H, W]`` (the whole image without one)."""
    if rec.window is None:
        return image
    _window_size(rec, (int(image.shape[-2]), int(image.shape[-1])))
    x0, y0, x1, y1 = rec.window
    return image[:, y0:y1, x0:x1].contiguous()


def collate(batch: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, Tensor]:
    """Stack images and pad targets into rows (``matching.anchor_targets``' input).

    Returns:
        images (Tensor[B, 3, S, S] uint8),
        targets (Tensor[B, M, 5] float32): rows (class 1..C, x1, y1, x2, y2)
        normalised, all 0 for padding, M = max(1, most boxes in an image).
    """
    images = torch.stack([img for img, _ in batch])
    m = max(1, max(len(t["labels"]) for _, t in batch))
    targets = torch.zeros((len(batch), m, 5))
    for b, (_, t) in enumerate(batch):
        n = len(t["labels"])
        targets[b, :n, 0] = t["labels"].float()
        targets[b, :n, 1:] = t["boxes"]
    return images, targets
