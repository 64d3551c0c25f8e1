"""Broken and hostile data sets, written by each test: every reader skips and counts, or fails
in one line, in bounded time and memory, and never reads outside the data folder."""

import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest
from fixtures import write_image, write_tiny_bananas

from tinyssd.data import DataError, load_split, read_coco, read_yolo
from tinyssd.data.base import (
    OUTSIDE_ROOT,
    SPECIAL_FILE,
    TOO_LARGE_IMAGE,
    TOO_MANY_BOXES,
    UNKNOWN_CLASS,
    ImageTooLarge,
    Report,
    image_size,
    read_image,
)
from tinyssd.data.check import check_dataset
from tinyssd.data.convert import convert
from tinyssd.data.limits import DataLimits

W, H = 32, 24


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_coco(root: Path, images: list[dict], annotations: list[dict], names=("dog",)) -> Path:
    categories = [{"id": i, "name": n} for i, n in enumerate(names, start=1)]
    data = {"images": images, "annotations": annotations, "categories": categories}
    return write(root / "annotations/instances_train.json", json.dumps(data))


def voc_xml(name: str, xmin, ymin, xmax, ymax, size: tuple[int, int] | None = None) -> str:
    """A VOC annotation with one object; ``size`` is (height, width)."""
    size_xml = f"<size><width>{size[1]}</width><height>{size[0]}</height></size>" if size else ""
    return (
        f"<annotation>{size_xml}<object><name>{name}</name><bndbox><xmin>{xmin}</xmin>"
        f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object></annotation>"
    )


def coco_image(i: int, name: str) -> dict:
    return {"id": i, "file_name": name, "width": W, "height": H}


def coco_box(i: int, image_id: int, **extra) -> dict:
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [2, 2, 10, 10], **extra}


def write_huge_png(path: Path, width: int, height: int) -> Path:
    """A black 1-bit PNG, streamed row by row: 13000 x 13000 is about 20 KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def run_isolated(code: str, timeout: float = 60) -> dict:
    """Run ``code`` in a fresh interpreter, killed after ``timeout`` s (a FIFO would block
    forever); it prints one JSON line, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# 1. Label files never pull in files from outside the data folder.


@pytest.fixture
def outside(tmp_path) -> Path:
    """An image outside the data folder, which label files will try to name."""
    return write_image(tmp_path / "private" / "secret.png", W, H)


def test_coco_file_names_outside_the_root_are_skipped_and_counted(tmp_path, outside):
    root = tmp_path / "data"
    write_image(root / "images/good.png", W, H)
    (root / "images").joinpath("link.png").symlink_to(outside)
    names = ["good.png", str(outside), "../../private/secret.png", "link.png"]
    images = [coco_image(i, name) for i, name in enumerate(names, start=1)]
    write_coco(root, images, [coco_box(i, i) for i in range(1, 5)])
    report = Report()
    split = read_coco(root, "train", report)
    assert [r.image.name for r in split.records] == ["good.png"]
    assert report.count(OUTSIDE_ROOT) == 3


def test_convert_never_links_a_file_from_outside_the_root(tmp_path, outside):
    root = tmp_path / "data"
    write_image(root / "images/good.png", W, H)
    write_coco(root, [coco_image(1, "good.png"), coco_image(2, "../private/secret.png")], [])
    out = convert(root, to="yolo", out=tmp_path / "out")
    written = sorted(p.name for p in (out / "images/train").iterdir())
    assert written == ["good.png"]
    secret = outside.stat()
    assert not any(
        (p.stat().st_ino, p.stat().st_dev) == (secret.st_ino, secret.st_dev)
        for p in out.rglob("*")
        if p.is_file()
    )


def test_yolo_list_entries_outside_the_root_are_skipped_but_data_yaml_paths_are_allowed(
    tmp_path, outside
):
    root = tmp_path / "data"
    write_image(root / "images/a.png", W, H)
    write(root / "labels/a.txt", "0 0.5 0.5 0.5 0.5\n")
    (root / "images/link.png").symlink_to(outside)
    listed = ["images/a.png", str(outside), "../private/secret.png", "images/link.png"]
    write(root / "train.txt", "\n".join(listed) + "\n")
    elsewhere = write_image(tmp_path / "elsewhere/images/b.png", W, H)
    write(tmp_path / "elsewhere/labels/b.txt", "0 0.5 0.5 0.5 0.5\n")
    write(root / "data.yaml", f"train: train.txt\nval: {elsewhere.parent}\nnames: [dog]\n")
    report = Report()
    train = read_yolo(root, "train", report)
    assert [r.image.name for r in train.records] == ["a.png"]
    assert report.count(OUTSIDE_ROOT) == 3
    val = read_yolo(root, "val", report)  # a folder the user named in data.yaml
    assert [r.image for r in val.records] == [elsewhere] and len(val.records[0].labels) == 1


def test_links_the_user_placed_in_banana_or_voc_folders_are_followed(tmp_path, outside):
    bananas = write_tiny_bananas(tmp_path / "bananas", n_train=2, n_val=1, size=32)
    (bananas / "bananas_train/images/9.png").symlink_to(outside)
    voc = tmp_path / "voc"
    write_image(voc / "a.png", W, H)
    (voc / "b.png").symlink_to(outside)
    write(voc / "a.xml", voc_xml("dog", 1, 1, 9, 9))
    write(voc / "b.xml", voc_xml("dog", 1, 1, 9, 9))
    for root, usable in ((bananas, 3), (voc, 2)):
        report = Report()
        assert len(load_split(root, "train", report=report).records) == usable
        assert report.count(OUTSIDE_ROOT) == 0, root


def test_a_linked_coco_or_yolo_image_folder_is_part_of_the_data_set(tmp_path):
    elsewhere = tmp_path / "disk2"
    write_image(elsewhere / "good.png", W, H)
    coco = tmp_path / "coco"
    coco.mkdir()
    (coco / "images").symlink_to(elsewhere)
    write_coco(coco, [coco_image(1, "good.png")], [coco_box(1, 1)])
    report = Report()
    assert [r.image.name for r in read_coco(coco, "train", report).records] == ["good.png"]
    yolo = tmp_path / "yolo"
    (yolo / "images").mkdir(parents=True)
    (yolo / "images" / "train").symlink_to(elsewhere)
    write(yolo / "labels/train/good.txt", "0 0.5 0.5 0.5 0.5\n")
    write(yolo / "data.yaml", "names: [dog]\n")
    assert [r.image.name for r in read_yolo(yolo, "train", report).records] == ["good.png"]
    assert report.count(OUTSIDE_ROOT) == 0


# 2. Special files are never opened: nothing blocks.


def test_fifos_and_devices_named_like_images_and_label_files_are_counted_and_never_block(
    tmp_path,
):
    bananas = write_tiny_bananas(tmp_path / "bananas", n_train=2, n_val=1, size=32)
    os.mkfifo(bananas / "bananas_train/images/5.png")
    voc = tmp_path / "voc"
    write_image(voc / "a.png", W, H)
    write_image(voc / "b.png", W, H)
    os.mkfifo(voc / "b.xml")  # a label file
    os.mkfifo(voc / "c.png")  # an image
    write(voc / "classes.txt", "dog\n")
    coco = tmp_path / "coco"
    write_image(coco / "images/a.png", W, H)
    os.mkfifo(coco / "images/f.png")
    write_coco(coco, [coco_image(1, "a.png"), coco_image(2, "f.png")], [coco_box(1, 1)])
    yolo = tmp_path / "yolo"
    write_image(yolo / "images/train/a.png", W, H)
    write_image(yolo / "images/train/b.png", W, H)
    os.mkfifo(yolo / "images/train/f.png")
    write(yolo / "labels/train/a.txt", "0 0.5 0.5 0.5 0.5\n")
    os.mkfifo(yolo / "labels/train/b.txt")
    write(yolo / "data.yaml", "names: [dog]\n")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    counts = run_isolated(
        f"""
        import json
        from tinyssd.data.base import DataError, read_image
        from tinyssd.data.check import check_dataset
        out = {{}}
        for root in {[str(p) for p in (bananas, voc, coco, yolo)]!r}:
            report = check_dataset(root)
            out[root] = {{k: len(v) for k, v in report.items.items()}}
            out[root]["images"] = report.splits["train"].images
        try:
            read_image({str(tmp_path / "zero.png")!r})
        except DataError as e:
            out["device"] = [type(e).__name__, str(e)]
        print(json.dumps(out))
        """
    )
    assert counts[str(bananas)][SPECIAL_FILE] == 1 and counts[str(bananas)]["images"] == 2
    assert counts[str(voc)][SPECIAL_FILE] == 2 and counts[str(voc)]["images"] == 1
    assert counts[str(coco)][SPECIAL_FILE] == 1 and counts[str(coco)]["images"] == 1
    assert counts[str(yolo)][SPECIAL_FILE] == 2 and counts[str(yolo)]["images"] == 1
    assert counts["device"] == [
        "NotRegularFile",
        f"{tmp_path / 'zero.png'}: not a regular file (FIFO, device or socket); not opened",
    ]


# 3. Bounded resources.


def test_a_huge_banana_label_is_an_unknown_class_not_a_class_list_of_that_size(tmp_path):
    root = write_tiny_bananas(tmp_path, n_train=2, n_val=1, size=32)
    csv = root / "bananas_train/label.csv"
    csv.write_text(csv.read_text() + "0.png,2000000000,1,1,9,9\n")
    report = Report()
    start = time.perf_counter()
    split = load_split(root, "train", report=report)
    assert time.perf_counter() - start < 5
    assert split.classes == ["banana"]
    assert report.items[UNKNOWN_CLASS] == [f"{csv}:4: label 2000000000"]


def test_a_huge_yolo_class_id_is_an_unknown_class(tmp_path):
    write_image(tmp_path / "images/train/a.png", W, H)
    write(tmp_path / "labels/train/a.txt", "2000000000 0.5 0.5 0.5 0.5\n0 0.5 0.5 0.5 0.5\n")
    write(tmp_path / "data.yaml", "names: [dog]\n")
    report = Report()
    split = read_yolo(tmp_path, "train", report)
    assert split.classes == ["dog"] and split.records[0].labels.tolist() == [1]
    assert report.count(UNKNOWN_CLASS) == 1


def test_yaml_aliases_are_refused_before_they_expand(tmp_path):
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    laughs += [f"{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    write(tmp_path / "data.yaml", "\n".join(laughs) + "\nnames: *i\n")
    write_image(tmp_path / "images/train/a.png", W, H)
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"data\.yaml: YAML aliases \(\*a\) are not allowed"):
        read_yolo(tmp_path, "train")
    assert time.perf_counter() - start < 5


def test_an_oversized_data_yaml_is_a_one_line_error(tmp_path):
    write(tmp_path / "data.yaml", "names: [dog]\n" + "#" * (2 << 20) + "\n")
    with pytest.raises(DataError, match=r"data\.yaml: larger than \d+ bytes") as e:
        read_yolo(tmp_path, "train")
    assert "\n" not in str(e.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_over_the_pixel_budget_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = write_huge_png(tmp_path / "bomb.png", 13000, 13000)
    assert bomb.stat().st_size < 100_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLarge, match=r"13000x13000 is 169000000 pixels, over the budget"):
        read_image(bomb)
    assert time.perf_counter() - start < 2  # no 169 M pixel decode
    monkeypatch.setenv("TINYSSD_MAX_PIXELS", "200000000")
    assert image_size(bomb) == (13000, 13000)  # the header only
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 1000)  # Pillow would raise at 2000
    assert image_size(bomb) == (13000, 13000)
    small = write_image(tmp_path / "small.png", W, H)
    with pytest.raises(ImageTooLarge):
        read_image(small, DataLimits(max_pixels=W * H - 1))
    assert read_image(small, DataLimits(max_pixels=W * H)).shape == (3, H, W)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_data_check_counts_an_image_over_the_pixel_budget(tmp_path):
    root = write_tiny_bananas(tmp_path, n_train=2, n_val=1, size=32)
    write_huge_png(root / "bananas_train/images/big.png", 13000, 13000)
    report = check_dataset(root)
    assert report.count(TOO_LARGE_IMAGE) == 1 and report.splits["train"].images == 2
    assert "image over the pixel budget (skipped)" in report.summary()


def test_an_image_with_too_many_boxes_keeps_the_first_ones(tmp_path, monkeypatch):
    root = write_tiny_bananas(tmp_path, n_train=1, n_val=1, size=32)
    csv = root / "bananas_train/label.csv"
    csv.write_text(csv.read_text() + "".join(f"0.png,0,{i % 20},0,30,30\n" for i in range(1200)))
    report = Report()
    rec = load_split(root, "train", report=report).records[0]
    assert len(rec.labels) == 500 and rec.boxes[1].tolist() == [0, 0, 30, 30]
    assert report.items[TOO_MANY_BOXES] == [
        f"{rec.image}: 1201 boxes, kept the first 500 (raise it with TINYSSD_MAX_BOXES)"
    ]
    monkeypatch.setenv("TINYSSD_MAX_BOXES", "5000")
    assert len(load_split(root, "train").records[0].labels) == 1201


# 7. What the data set says reaches the terminal escaped.


def test_control_characters_in_paths_and_class_names_are_escaped(tmp_path):
    root = tmp_path / "evil\x1b[2J\nroot"
    write_image(root / "a.png", W, H)
    write(
        root / "a.xml",
        "<annotation><object><name>plu\tm</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>",
    )
    write(root / "classes.txt", "dog\n")
    summary = check_dataset(root).summary()
    assert "\x1b" not in summary and "\\x1b[2J\\nroot" in summary
    assert len(summary.splitlines()) == 5  # root, train, val, the problem kind, its place
    with pytest.raises(DataError) as e:
        convert(root / "nowhere\x1b[2J", to="coco", out=tmp_path / "out")
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)
