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

    from tinyssd.checkpoint import save_checkpoint
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


def write_image(path: Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """A noisy RGB image of ``width`` x ``height`` pixels (PNG or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def assert_valid_split(split) -> None:
    """What every reader promises: finite non-empty boxes, labels 1..C, flags per box."""
    import torch

    for rec in split.records:
        m = len(rec.labels)
        assert rec.boxes.shape == (m, 4) and rec.boxes.dtype == torch.float32
        assert rec.labels.dtype == torch.int64
        assert rec.difficult.shape == rec.iscrowd.shape == (m,)
        assert torch.isfinite(rec.boxes).all()
        x1, y1, x2, y2 = rec.boxes.unbind(1)
        assert (x2 > x1).all() and (y2 > y1).all()
        assert ((rec.labels >= 1) & (rec.labels <= len(split.classes))).all()


def assert_names_a_file(message: str, root: Path) -> None:
    """A DataError or report entry: one line that starts with a path inside ``root``."""
    assert "\n" not in message, message
    assert message.startswith(str(root)), message


def corrupted(valid: bytes):
    """Hypothesis strategy: random bytes, or ``valid`` truncated, or with a span replaced by
    random bytes or by a token that parsers trip on (numbers out of range, quotes, brackets)."""
    from hypothesis import strategies as st

    tokens = [b"", b"nan", b"inf", b"-1", b"1e999", b"1" * 400, b"<", b">", b"&", b'"', b"{",
              b"}", b"[", b"]", b",", b":", b"\x00", b"\xff\xfe", b"\n", b" ", b"0.5", b"-",
              b"true", b"null", b"[[[[[[", b"</annotation>", b"<object>"]  # fmt: skip
    n = len(valid)

    def splice(start: int, length: int, new: bytes) -> bytes:
        return valid[:start] + new + valid[start + length :]

    return st.one_of(
        st.binary(max_size=300),
        st.integers(0, n).map(lambda k: valid[:k]),
        st.builds(splice, st.integers(0, n), st.integers(0, 8), st.binary(max_size=8)),
        st.builds(splice, st.integers(0, n), st.integers(0, 8), st.sampled_from(tokens)),
    )


# Appended to a probe script run in a fresh process: prints "heap" when a 256 MB tensor is
# served from the [heap] mapping (glibc keeping freed memory) rather than a fresh mmap.
HEAP_PROBE = """
import torch
t = torch.empty(256 * 2**20, dtype=torch.uint8)
for line in open("/proc/self/maps"):
    if line.rstrip().endswith("[heap]"):
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= t.data_ptr() < end:
            print("heap")
"""


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` RGB, with one tiny IDAT: what Pillow
    reads of it before decoding is all a real one of that size would give."""

    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\0" * (1 + 3 * width))  # the first row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
