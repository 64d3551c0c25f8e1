"""``data convert`` to any format, then ``data check`` of the output: no problem reported."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from fixtures import find_shared, write_image

from tinyssd.data import FORMATS
from tinyssd.data.base import Record
from tinyssd.data.check import check_dataset
from tinyssd.data.convert import convert

NAMES = list(FORMATS)
CLASSES = ["Platelets", "RBC", "WBC"]


def _records(folder, n=12, seed=0):
    """Images of odd sizes with boxes at fractional pixels, many touching an edge."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        w, h = int(rng.integers(37, 129)), int(rng.integers(29, 101))
        image = write_image(folder / f"{i}.png", w, h, seed=i)
        boxes = []
        for _ in range(int(rng.integers(1, 5))):
            x1, x2 = sorted(rng.uniform(0, w, 2))
            y1, y2 = sorted(rng.uniform(0, h, 2))
            edge = rng.integers(0, 4)  # push one side onto the image's border
            x1, y1, x2, y2 = (
                0.0 if edge == 0 else x1,
                0.0 if edge == 1 else y1,
                float(w) if edge == 2 else x2,
                float(h) if edge == 3 else y2,
            )
            boxes.append([x1, y1, max(x2, x1 + 1.37), max(y2, y1 + 1.19)])
        labels = rng.integers(1, len(CLASSES) + 1, len(boxes))
        records.append(Record.make(image, np.clip(boxes, 0, [w, h, w, h]), labels, size=(h, w)))
    return records


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same small data set written in every format."""
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for name in NAMES:
        for split in ("train", "val"):
            records = _records(root / "images" / split, seed=len(split))
            FORMATS[name].write(root / name, split, records, CLASSES)
        assert not check_dataset(root / name, name), check_dataset(root / name).summary()
        out[name] = root / name
    return out


@pytest.mark.parametrize(("src", "to"), list(itertools.product(NAMES, NAMES)))
def test_converted_data_passes_data_check(sources, tmp_path, src, to):
    out = convert(sources[src], to, tmp_path / to)
    report = check_dataset(out)
    assert not report, report.summary()
    assert report.format == to
    assert sum(s.boxes for s in report.splits.values()) > 0


@pytest.mark.parametrize("to", NAMES)
@pytest.mark.parametrize("name", ["bccd/BCCD", "banana-detection"])
def test_shared_data_sets_convert_cleanly(tmp_path, name, to):
    src = find_shared() / "data" / name
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    out = convert(src, to, tmp_path / to)
    report = check_dataset(out)
    assert not report, report.summary()
