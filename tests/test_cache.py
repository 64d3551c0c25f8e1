"""--cache ram / disk / none / auto: the same batches, a disk cache that is reused and rebuilt."""

import os

import numpy as np
import pytest
import torch
from fixtures import write_tiny_bananas
from PIL import Image

import tinyssd.data.dataset as dataset_module
from tinyssd.data import DetectionDataset, Report, load_split
from tinyssd.data.dataset import disk_cache_dir, resolve_cache
from tinyssd.engine.distributed import GlobalBatchSampler
from tinyssd.engine.inputs import read_batches, stack_dataset


@pytest.fixture
def split(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path / "cache"))
    return load_split(write_tiny_bananas(tmp_path / "data", n_train=10, n_val=2, size=40), "train")


def _epoch(dataset, flip=True, workers=0):
    stacked = stack_dataset(dataset) if dataset.cache == "ram" else None
    sampler = GlobalBatchSampler(len(dataset), 4, seed=3, flip=flip)
    sampler.set_epoch(1)
    return list(read_batches(dataset, sampler, workers, stacked))


def _count_decodes(monkeypatch):
    decoded = []

    def counted(path, *args, **kwargs):
        decoded.append(path)
        return original(path, *args, **kwargs)

    original = dataset_module.read_image
    monkeypatch.setattr(dataset_module, "read_image", counted)
    return decoded


@pytest.mark.parametrize(("cache", "workers"), [("disk", 0), ("none", 0), ("none", 1)])
def test_every_cache_gives_the_batches_of_ram_for_the_same_seed(split, cache, workers):
    expected = _epoch(DetectionDataset(split, 32, cache="ram"))
    got = _epoch(DetectionDataset(split, 32, cache=cache), workers=workers)
    assert len(got) == len(expected) == 3
    for (images, labels), (ram_images, ram_labels) in zip(got, expected, strict=True):
        assert torch.equal(images, ram_images)
        assert torch.equal(labels, ram_labels)


def test_the_positional_constructor_keeps_every_image_in_ram(split):
    report = Report()
    dataset = DetectionDataset(split, 32, None, report)
    assert dataset.cache == "ram" and isinstance(dataset.images, list)
    assert len(dataset.images) == 10 and dataset.images[0].shape == (3, 32, 32)


def test_lazy_images_decode_when_indexed(split, monkeypatch):
    decoded = _count_decodes(monkeypatch)
    dataset = DetectionDataset(split, 32, cache="none")
    assert decoded == []  # headers only
    ram = DetectionDataset(split, 32, cache="ram")
    torch.testing.assert_close(dataset.images[4], ram.images[4])
    assert len(dataset.images) == 10


def test_the_disk_cache_is_reused_on_a_second_run(split, tmp_path, monkeypatch):
    _epoch(DetectionDataset(split, 32, cache="disk"))
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(files) == 10
    assert not list((tmp_path / "data").rglob("*.npy"))  # never inside the data folder
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # written atomically
    decoded = _count_decodes(monkeypatch)
    _epoch(DetectionDataset(split, 32, cache="disk"))
    assert decoded == []
    assert sorted((tmp_path / "cache").rglob("*.npy")) == files


def test_a_changed_image_is_decoded_again_and_its_old_cache_file_removed(split, tmp_path):
    dataset = DetectionDataset(split, 32, cache="disk")
    before = dataset.images[0]
    path = split.records[0].image
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a later mtime, whatever the clock
    after = dataset.images[0]
    assert not torch.equal(after, before)
    assert torch.equal(after, torch.full((3, 32, 32), 200, dtype=torch.uint8))
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the stale one is gone


BAD_ENTRIES = {  # what another program (or version) may have left under the cache's name
    "channels last": lambda image: image.permute(1, 2, 0).numpy(),
    "float": lambda image: image.numpy().astype(np.float32),
    "another size": lambda image: image[:, :8, :8].numpy(),
    "grey": lambda image: image[0].numpy(),
    "four channels": lambda image: np.concatenate([image.numpy(), image[:1].numpy()]),
}


def test_bad_disk_cache_entries_are_rebuilt_and_counted_not_stacked(split, tmp_path, caplog):
    expected = _epoch(DetectionDataset(split, 32, cache="ram"))
    _epoch(DetectionDataset(split, 32, cache="disk"))
    files = sorted((tmp_path / "cache").rglob("*.npy"))
    for file, make_bad in zip(files, BAD_ENTRIES.values()):
        np.save(file, make_bad(torch.from_numpy(np.load(file))))
    dataset = DetectionDataset(split, 32, cache="disk")
    got = _epoch(dataset)
    for (images, labels), (ram_images, ram_labels) in zip(got, expected, strict=True):
        assert torch.equal(images, ram_images) and torch.equal(labels, ram_labels)
    assert dataset.disk is not None and dataset.disk.rebuilt == len(BAD_ENTRIES)
    assert "disk cache entry" in caplog.text and "5 bad entries rebuilt so far" in caplog.text
    assert "is float32 (3, 32, 32), not uint8 (3, 32, 32)" in caplog.text
    assert _epoch(DetectionDataset(split, 32, cache="disk"))  # rebuilt for good
    assert sorted((tmp_path / "cache").rglob("*.npy")) == files


def test_a_whole_image_entry_of_another_size_is_rebuilt(split, tmp_path):
    from tinyssd.tiling import Tiling

    held = DetectionDataset(split, 32, cache="disk", tiling=Tiling(512, 0.2))  # full size
    image = held.load_image(0)
    (file,) = (tmp_path / "cache").rglob("*.npy")
    np.save(file, image[:, :20].numpy())
    assert torch.equal(held.load_image(0), image)
    assert held.disk is not None and held.disk.rebuilt == 1


def test_the_cache_folder_depends_on_the_data_root_and_size(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSSD_CACHE", str(tmp_path))
    a = disk_cache_dir(tmp_path / "a", 32)
    assert a.is_relative_to(tmp_path)
    assert a != disk_cache_dir(tmp_path / "a", 64) != disk_cache_dir(tmp_path / "b", 32)
    assert disk_cache_dir(tmp_path / "a", None) != a  # full resolution (with a transform)


def test_auto_holds_the_set_in_ram_only_within_the_budget(split, monkeypatch, caplog):
    caplog.set_level("INFO")
    set_bytes = 10 * 3 * 32 * 32
    monkeypatch.setattr(dataset_module, "ram_budget", lambda: set_bytes)
    dataset = DetectionDataset(split, 32, cache="auto")
    assert dataset.cache == "ram" and isinstance(dataset.images, list)
    assert "within the RAM budget" in caplog.text
    monkeypatch.setattr(dataset_module, "ram_budget", lambda: set_bytes - 1)
    assert DetectionDataset(split, 32, cache="auto").cache == "none"
    assert "over the RAM budget" in caplog.text and "--cache none" in caplog.text


def test_the_ram_budget_is_a_quarter_of_available_memory_at_most_4_gib(monkeypatch):
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 8 << 30)
    assert dataset_module.ram_budget() == 2 << 30
    monkeypatch.setattr(dataset_module, "available_memory", lambda: 64 << 30)
    assert dataset_module.ram_budget() == 4 << 30
    assert resolve_cache("disk", 10**15) == "disk"
    with pytest.raises(ValueError, match="choose from"):
        resolve_cache("gpu", 0)
