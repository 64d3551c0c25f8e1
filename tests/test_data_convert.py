"""``tinyssd data convert``: every format round-trips the same boxes, labels and class names."""

import hashlib
import itertools
import json
import logging

import numpy as np
import pytest
import torch
from fixtures import find_shared, write_image

from tinyssd.cli import main
from tinyssd.data import FORMATS, DataError, detect_format, load_split
from tinyssd.data.base import Record
from tinyssd.data.check import check_dataset
from tinyssd.data.convert import convert
from tinyssd.data.synthetic import make_synthetic

TARGETS = ["voc", "coco", "yolo", "bananas"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """5 train + 3 val images of 64 px, four classes (whose sorted order is not theirs)."""
    return make_synthetic(tmp_path_factory.mktemp("synth"), train=5, val=3, classes=4, size=64)


def by_content(split):
    """Image bytes' sha1 -> (boxes, labels): images keep their bytes, not always their names."""
    return {
        hashlib.sha1(rec.image.read_bytes()).hexdigest(): (rec.boxes, rec.labels)
        for rec in split.records
    }


def assert_same_data(a_root, b_root, b_format="auto"):
    for split in ("train", "val"):
        a, b = load_split(a_root, split), load_split(b_root, split, b_format)
        assert b.classes == a.classes
        a_images, b_images = by_content(a), by_content(b)
        assert b_images.keys() == a_images.keys()
        for key, (boxes, labels) in a_images.items():
            torch.testing.assert_close(b_images[key][0], boxes, atol=1e-3, rtol=0)
            assert b_images[key][1].tolist() == labels.tolist()


@pytest.mark.parametrize("to", TARGETS)
def test_bananas_to_each_format_and_back_keeps_boxes_labels_and_names(synth, tmp_path, to):
    assert sum(len(r.labels) for r in load_split(synth, "val").records) > 0
    out = convert(synth, to, tmp_path / to)
    assert out == tmp_path / to and detect_format(out) == to
    assert_same_data(synth, out)
    back = convert(out, "bananas", tmp_path / "back")
    assert_same_data(synth, back, "bananas")
    assert load_split(back, "train").classes == ["disc", "square", "triangle", "star"]


def test_images_are_hard_linked_where_possible(synth, tmp_path):
    out = convert(synth, "coco", tmp_path / "coco")
    source = synth / "bananas_train/images/0.png"
    assert (out / "images/train/0.png").samefile(source)


def write_flagged_coco(root):
    """One image: a plain box, a crowd region, a difficult box (tinyssd's extension key)."""
    write_image(root / "images/train/a.png", 64, 48)
    annotations = [
        {"image_id": 1, "category_id": 5, "bbox": [1, 2, 10, 10]},
        {"image_id": 1, "category_id": 5, "bbox": [20, 2, 30, 40], "iscrowd": 1},
        {"image_id": 1, "category_id": 9, "bbox": [3, 30, 5.5, 8], "difficult": 1},
    ]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "annotations": annotations,
        "categories": [{"id": 9, "name": "pear"}, {"id": 5, "name": "apple"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations/instances_train.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    "to, difficult, iscrowd",
    [
        ("coco", [False, False, True], [False, True, False]),
        ("voc", [False, True, True], [False, False, False]),  # crowd becomes difficult
        ("yolo", [False, False, False], [False, False, False]),
        ("bananas", [False, False, False], [False, False, False]),
    ],
)
def test_difficult_and_crowd_flags_go_where_the_target_can_hold_them(
    tmp_path, to, difficult, iscrowd
):
    src = write_flagged_coco(tmp_path / "src")
    out = convert(src, to, tmp_path / to)
    rec = load_split(out, "train").records[0]
    assert load_split(out, "train").classes == ["apple", "pear"]
    torch.testing.assert_close(
        rec.boxes, torch.tensor([[1.0, 2, 11, 12], [20, 2, 50, 42], [3, 30, 8.5, 38]])
    )
    assert rec.labels.tolist() == [1, 1, 2]
    assert rec.difficult.tolist() == difficult and rec.iscrowd.tolist() == iscrowd


def test_voc_difficult_survives_a_trip_through_coco(tmp_path):
    voc = convert(write_flagged_coco(tmp_path / "src"), "voc", tmp_path / "voc")
    again = convert(convert(voc, "coco", tmp_path / "coco"), "voc", tmp_path / "again")
    assert load_split(again, "train").records[0].difficult.tolist() == [False, True, True]


def test_yolo_output_clips_boxes_outside_the_image_and_says_so(tmp_path, caplog):
    root = tmp_path / "src"
    write_image(root / "bananas_train/images/0.png", 64, 48)
    (root / "bananas_train/label.csv").write_text(
        "img_name,label,xmin,ymin,xmax,ymax\n0.png,0,50,-5,70,20\n"
    )
    with caplog.at_level(logging.WARNING):
        out = convert(root, "yolo", tmp_path / "yolo")
    assert "box outside the image (clipped)" in caplog.text
    rec = load_split(out, "train").records[0]
    torch.testing.assert_close(rec.boxes, torch.tensor([[50.0, 0, 64, 20]]))


def test_unreadable_images_are_left_out_and_reported(tmp_path, caplog):
    root = tmp_path / "src"
    write_image(root / "bananas_train/images/0.png")
    (root / "bananas_train/images/1.png").write_text("not an image")
    (root / "bananas_train/label.csv").write_text(
        "img_name,label,xmin,ymin,xmax,ymax\n0.png,0,1,1,9,9\n1.png,0,1,1,9,9\n"
    )
    with caplog.at_level(logging.WARNING):
        out = convert(root, "voc", tmp_path / "voc")
    assert [r.image.name for r in load_split(out, "train").records] == ["0.png"]
    assert "1.png: unreadable image" in caplog.text


def test_refuses_a_non_empty_output_an_unknown_target_and_splits_with_other_classes(
    synth, tmp_path
):
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep.txt").write_text("mine")
    with pytest.raises(DataError, match="full: the output folder must be new or empty"):
        convert(synth, "voc", tmp_path / "full")
    with pytest.raises(DataError, match="unknown target format 'pascal'"):
        convert(synth, "pascal", tmp_path / "x")
    src = write_flagged_coco(tmp_path / "src")
    val = json.loads((src / "annotations/instances_train.json").read_text())
    val["categories"][0]["name"] = "plum"
    (src / "annotations/instances_val.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match="train and val name different classes"):
        convert(src, "yolo", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_the_convert_command_prints_the_output_folder(synth, tmp_path, capsys):
    out = tmp_path / "yolo"
    assert main(["data", "convert", str(synth), "--to", "yolo", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    assert detect_format(out) == "yolo"


@pytest.mark.parametrize("setup", ["empty", "unknown files", "missing"])
def test_the_convert_command_fails_in_one_line_with_exit_code_2(tmp_path, capsys, setup):
    src = tmp_path / "src"
    if setup != "missing":
        src.mkdir()
    if setup == "unknown files":
        (src / "notes.txt").write_text("hello")
        write_image(src / "photo.png")
    assert main(["data", "convert", str(src), "--to", "voc", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"tinyssd: error: {src}: ")
    assert not (tmp_path / "out").exists()


def coco_with_classes(root, names):
    """A COCO set of one image with one box per class named ``names``."""
    write_image(root / "images/a.png", 32, 24)
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 24}],
        "annotations": [
            {"id": i, "image_id": 1, "category_id": i, "bbox": [1, 1, 8, 8]}
            for i in range(1, len(names) + 1)
        ],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names, start=1)],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_train.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    "names, to, says",
    [
        (["dog", ""], "coco", r"json: categories\[1\]: empty class name"),
        (["dog", "  "], "yolo", r"json: categories\[1\]: empty class name"),
        (["hot\\ndog"], "voc", r"class 1 'hot\\ndog' cannot be written as voc: .*control"),
        (["hot\\ndog"], "bananas", r"cannot be written as bananas: .*control"),
        ([" dog"], "voc", r"class 1 ' dog' cannot be written as voc: it starts or ends"),
        (["dog", "dog"], "coco", r"categories\[1\]: class name 'dog' is also categories\[0\]'s"),
    ],
)
def test_class_names_the_target_cannot_hold_are_a_one_line_error(tmp_path, names, to, says):
    names = [n.replace("\\n", "\n") for n in names]
    src = coco_with_classes(tmp_path / "src", names)
    with pytest.raises(DataError, match=says) as e:
        convert(src, to=to, out=tmp_path / "out")
    assert "\n" not in str(e.value) and str(e.value).startswith(str(src))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("to", ["coco", "yolo"])
def test_class_names_the_target_can_hold_convert_unchanged(tmp_path, to):
    names = ["hot\ndog", " cat", "a,b"]
    src = coco_with_classes(tmp_path / "src", names)
    out = convert(src, to=to, out=tmp_path / "out")
    assert load_split(out, "train").classes == names


@pytest.mark.parametrize("to", TARGETS)
def test_a_file_name_that_is_not_utf8_converts(tmp_path, to):
    import os

    stem = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a lone surrogate in Python
    write_image(tmp_path / "src" / f"{stem}.png", 32, 24)
    (tmp_path / "src" / f"{stem}.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>10</xmax><ymax>12</ymax></bndbox></object></annotation>"
    )
    out = convert(tmp_path / "src", to=to, out=tmp_path / "out")
    (rec,) = load_split(out, "train").records
    assert rec.image.name == "caf\ufffd.png"
    assert rec.boxes.tolist() == [[1, 2, 10, 12]]


@pytest.mark.parametrize("to", TARGETS)
def test_a_voc_set_whose_file_names_are_not_utf8_keeps_every_image(tmp_path, to):
    import os

    src = tmp_path / "src"
    box = (
        "<object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>10</xmax>"
        "<ymax>12</ymax></bndbox></object>"
    )
    for raw, objects in ((b"caf\xe9", box), (b"th\xe9", ""), (b"\xff", None)):
        stem = os.fsdecode(raw)  # Latin-1 bytes: lone surrogates in Python
        write_image(src / f"{stem}.jpg", 32, 24)
        if objects is not None:  # the tool that wrote it put the Latin-1 name in <filename>
            xml = b"<annotation><filename>" + raw + b".jpg</filename>"
            (src / f"{stem}.xml").write_bytes(xml + objects.encode() + b"</annotation>")
    out = convert(src, to=to, out=tmp_path / "out")
    records = load_split(out, "train").records
    assert sorted(len(r.labels) for r in records) == [0, 0, 1]
    assert all("\ufffd" in r.image.name for r in records)


def test_each_split_counts_the_images_it_read_but_left_out(tmp_path, caplog):
    write_image(tmp_path / "src/a.png", 32, 24)
    (tmp_path / "src/a.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
        "<xmax>10</xmax><ymax>12</ymax></bndbox></object></annotation>"
    )
    (tmp_path / "src/b.png").write_text("not an image")  # no XML: a negative, till its header
    with caplog.at_level(logging.INFO, logger="tinyssd.data.convert"):
        convert(tmp_path / "src", to="coco", out=tmp_path / "out")
    assert "train: 1 images, 1 boxes written (1 read but left out: header unreadable" in caplog.text
    assert "b.png: unreadable image" in caplog.text


# ``data convert`` to any format, then ``data check`` of the output: no problem reported.

FORMAT_NAMES = list(FORMATS)
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
    for name in FORMAT_NAMES:
        for split in ("train", "val"):
            records = _records(root / "images" / split, seed=len(split))
            FORMATS[name].write(root / name, split, records, CLASSES)
        assert not check_dataset(root / name, name), check_dataset(root / name).summary()
        out[name] = root / name
    return out


@pytest.mark.parametrize(("src", "to"), list(itertools.product(FORMAT_NAMES, FORMAT_NAMES)))
def test_converted_data_passes_data_check(sources, tmp_path, src, to):
    out = convert(sources[src], to, tmp_path / to)
    report = check_dataset(out)
    assert not report, report.summary()
    assert report.format == to
    assert sum(s.boxes for s in report.splits.values()) > 0


@pytest.mark.parametrize("to", FORMAT_NAMES)
@pytest.mark.parametrize("name", ["bccd/BCCD", "banana-detection"])
def test_shared_data_sets_convert_cleanly(tmp_path, name, to):
    src = find_shared() / "data" / name
    if not src.is_dir():
        pytest.skip(f"{src} is absent")
    out = convert(src, to, tmp_path / to)
    report = check_dataset(out)
    assert not report, report.summary()
