"""Shared bits of the benchmark scripts: where the reference lives, JSON output."""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# $TINYSSD_SHARED, else ../shared beside the checkout, else /work/shared
SHARED = next(
    (
        Path(p)
        for p in (os.environ.get("TINYSSD_SHARED"), ROOT.parent / "shared", "/work/shared")
        if p and Path(p).is_dir()
    ),
    ROOT.parent / "shared",
)
REFERENCE = SHARED / "reference"
BANANAS = SHARED / "data" / "banana-detection"


def chapter_module():
    """The chapter's code (``../shared/reference/chapter_tinyssd.py``), or None if absent."""
    if not (REFERENCE / "chapter_tinyssd.py").is_file():
        return None
    sys.path.insert(0, str(REFERENCE))
    try:
        import chapter_tinyssd
    except ImportError as e:  # d2l not installed
        print(f"chapter baseline unavailable: {e}", file=sys.stderr)
        return None
    return chapter_tinyssd


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def train_metrics(**train_kwargs) -> tuple[list[dict[str, float]], float]:
    """Run ``tinyssd.train`` in a throw-away folder: its metrics.csv rows and the wall seconds."""
    import tinyssd

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = tinyssd.train(out=str(Path(tmp) / "run"), progress=False, **train_kwargs)
        wall = time.perf_counter() - t0
        with (run / "metrics.csv").open() as f:
            rows = [{k: float(v or "nan") for k, v in row.items()} for row in csv.DictReader(f)]
    return rows, wall
