"""DetectionDataset with lazy decoding: unreadable images found from headers, failures skipped."""

import numpy as np
import pytest
import torch
from fixtures import write_tiny_bananas
from PIL import Image

import tinyssd.data.dataset as dataset_module
from tinyssd.data import DetectionDataset, Report, collate, load_split
from tinyssd.data.base import UNREADABLE_IMAGE
from tinyssd.engine.distributed import GlobalBatchSampler
from tinyssd.engine.inputs import read_batches


def _truncated_jpeg(path):
    """A JPEG whose header reads but whose pixels do not decode (half its bytes)."""
    noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def data(tmp_path):
    return write_tiny_bananas(tmp_path, n_train=6, n_val=2, size=40)


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_an_image_without_a_readable_header_is_reported_without_decoding(
    data, cache, monkeypatch, tmp_path
):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    (data / "bananas_train" / "images" / "2.png").write_text("not an image")
    decoded = []
    monkeypatch.setattr(dataset_module, "read_image", lambda *a, **k: decoded.append(a))
    report = Report()
    dataset = DetectionDataset(load_split(data, "train"), 32, report=report, cache=cache)
    assert len(dataset) == 5 and decoded == []
    assert report.count(UNREADABLE_IMAGE) == 1 and "2.png" in report.items[UNREADABLE_IMAGE][0]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_fails_to_decode_in_a_loader_is_skipped_and_counted(data, workers, caplog):
    _truncated_jpeg(data / "bananas_train" / "images" / "3.png")
    report = Report()
    dataset = DetectionDataset(load_split(data, "train"), 32, report=report, cache="none")
    assert len(dataset) == 6  # its header reads: the failure comes in the loader
    out = list(read_batches(dataset, GlobalBatchSampler(len(dataset), 4, seed=0), workers))
    assert sum(len(images) for images, _ in out) == 5
    assert len(dataset.failed_reads) == 1 and "3.png" in dataset.failed_reads[0]
    assert report.count(UNREADABLE_IMAGE) == 1
    assert "skipped an image that did not decode" in caplog.text


def test_ram_reports_and_leaves_out_an_image_that_does_not_decode(data):
    _truncated_jpeg(data / "bananas_train" / "images" / "3.png")
    report = Report()
    dataset = DetectionDataset(load_split(data, "train"), 32, report=report)
    assert len(dataset) == len(dataset.images) == 5 and report.count(UNREADABLE_IMAGE) == 1


def test_a_transform_gets_the_full_resolution_image_when_decoded_lazily(data):
    seen = []

    def transform(image, boxes, labels):
        seen.append(tuple(image.shape))
        return image[:, :32, :32], boxes / 40, labels

    dataset = DetectionDataset(load_split(data, "train"), 32, transform, cache="none")
    image, target = dataset[0]
    assert seen == [(3, 40, 40)] and image.shape == (3, 32, 32)
    assert dataset.decoded_bytes() == 6 * 3 * 40 * 40
    assert torch.all(target["boxes"] <= 1)


def test_collate_pads_rows_with_classes_1_to_c_and_zero_rows():
    box = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    batch = [
        (torch.zeros(3, 8, 8, dtype=torch.uint8), {"boxes": box, "labels": torch.tensor([2])}),
        (
            torch.ones(3, 8, 8, dtype=torch.uint8),
            {"boxes": box.repeat(2, 1), "labels": torch.tensor([1, 3])},
        ),
        (
            torch.ones(3, 8, 8, dtype=torch.uint8),
            {"boxes": box[:0], "labels": torch.tensor([], dtype=torch.long)},
        ),
    ]
    images, targets = collate(batch)
    assert images.shape == (3, 3, 8, 8) and targets.shape == (3, 2, 5)
    assert targets[:, :, 0].tolist() == [[2, 0], [1, 3], [0, 0]]
    assert (
        torch.equal(targets[0, 0, 1:], box[0]) and not targets[0, 1].any() and not targets[2].any()
    )
