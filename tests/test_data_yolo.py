"""YOLO txt: normalised cx cy w h to pixels and back, layouts, class names, bad files."""

import tempfile
from pathlib import Path

import pytest
import torch
from fixtures import assert_names_a_file, assert_valid_split, corrupted, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tinyssd.data import DataError, Record, Report, detect_format, parse_yolo_txt, read_yolo
from tinyssd.data.base import (
    BAD_BOX,
    BAD_LABEL_FILE,
    MISSING_IMAGE,
    NO_LABELS,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
)
from tinyssd.data.yolo import label_path, write_yolo, yolo_splits


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_normalised_centre_and_size_become_pixel_corners(tmp_path):
    txt = write(tmp_path / "a.txt", "1 0.5 0.5 0.2 0.4\n\n0 0.25 0.1 0.5 0.2  \n")
    boxes, classes, lines = parse_yolo_txt(txt, width=100, height=50)
    torch.testing.assert_close(boxes, torch.tensor([[40.0, 15, 60, 35], [0, 0, 50, 10]]))
    assert classes.tolist() == [1, 0] and lines == [1, 3]


@pytest.mark.parametrize(
    "text, says",
    [
        ("0 0.5 0.5 0.2\n", ":1: expected 5 values"),
        ("0 0.5 0.5 0.2 0.4\n0 0.5 0.5 0.2 0.4 0.1 0.1\n", ":2: expected 5 values"),
        ("dog 0.5 0.5 0.2 0.4\n", ":1: not an integer class"),
        ("0.5 0.5 0.5 0.2 0.4\n", ":1: not an integer class"),
        ("0 0.5 nan 0.2 0.4\n", ":1: not an integer class"),
        ("0 1e38 0.5 0.2 0.4\n", ":1: not an integer class"),  # 1e38 * width overflows float32
        ("\u0663 0.5 0.5 0.2 0.4\n", ":1: not an integer class"),  # Arabic-Indic 3: float() reads 3
        ("1 0.5 0.5 0.2 0_4\n", ":1: not an integer class"),  # float("0_4") is 4.0
    ],
)
def test_bad_rows_raise_one_line_naming_file_and_line(tmp_path, text, says):
    txt = write(tmp_path / "a.txt", text)
    with pytest.raises(DataError, match=says) as e:
        parse_yolo_txt(txt, 100, 50)
    assert_names_a_file(str(e.value), txt)


def yolo_layout(root: Path, names_yaml: str = "names: {0: dog, 1: cat}\n") -> Path:
    """train: a (dog + cat), b (no txt), c (empty txt), d (unknown class, empty box);
    labels/train/ghost.txt has no image."""
    for i, stem in enumerate("abcd"):
        write_image(root / "images/train" / f"{stem}.png", width=100, height=50, seed=i)
    write(root / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.2 0.2\n")
    write(root / "labels/train/c.txt", "")
    write(root / "labels/train/d.txt", "7 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n0 0.5 0.5 0.1 0.1\n")
    write(root / "labels/train/ghost.txt", "0 0.5 0.5 0.1 0.1\n")
    write_image(root / "images/val/e.png", width=100, height=50)
    write(root / "labels/val/e.txt", "1 0.5 0.5 1 1\n")
    if names_yaml:
        write(root / "data.yaml", names_yaml)
    return root


def test_read_yolo_gives_pixel_boxes_and_reports_each_problem(tmp_path):
    root = yolo_layout(tmp_path)
    assert detect_format(root) == "yolo"
    assert yolo_splits(root) == {"train": root / "images/train", "val": root / "images/val"}
    report = Report()
    split = read_yolo(root, "train", report)
    assert split.classes == ["dog", "cat"]
    assert [r.image.name for r in split.records] == ["a.png", "b.png", "c.png", "d.png"]
    a, b, c, d = split.records
    torch.testing.assert_close(a.boxes, torch.tensor([[40.0, 15, 60, 35], [0, 0, 20, 10]]))
    assert a.labels.tolist() == [1, 2] and a.size == (50, 100)
    assert len(b.labels) == len(c.labels) == 0
    torch.testing.assert_close(d.boxes, torch.tensor([[45.0, 22.5, 55, 27.5]]))
    labels = root / "labels/train"
    assert report.items[NO_LABELS] == [
        f"{root / 'images/train/b.png'}: no b.txt",
        f"{root / 'images/train/c.png'}: c.txt is empty",
    ]
    assert report.items[UNKNOWN_CLASS] == [f"{labels / 'd.txt'}:1: class 7 (2 names)"]
    assert report.items[BAD_BOX] == [f"{labels / 'd.txt'}:2: width or height is not positive"]
    assert report.items[MISSING_IMAGE] == [f"{labels / 'ghost.txt'}: no image for this label file"]


def test_class_names_from_a_list_or_classes_txt_and_none_is_an_error(tmp_path):
    assert read_yolo(yolo_layout(tmp_path / "list", "names: [dog, cat]\n")).classes == [
        "dog",
        "cat",
    ]
    root = yolo_layout(tmp_path / "txt", names_yaml="")
    write(root / "classes.txt", "dog\ncat\n")
    assert read_yolo(root, "val").classes == ["dog", "cat"]
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="no class names"):
        read_yolo(root, "val")
    write(root / "data.yaml", "names: {0: dog, 2: cat}\n")
    with pytest.raises(DataError, match=r"data.yaml: names: ids must be 0..1"):
        read_yolo(root, "val")


@pytest.mark.parametrize(
    "names, says",
    [
        (
            "names: [dog, cat, dog]\n",
            r"data.yaml: names\[2\]: class name 'dog' is also names\[0\]'s",
        ),
        ("names: {0: dog, 1: ''}\n", r"data.yaml: names\[1\]: empty class name"),
    ],
)
def test_class_names_named_alike_or_not_at_all_are_a_one_line_error(tmp_path, names, says):
    with pytest.raises(DataError, match=says):
        read_yolo(yolo_layout(tmp_path, names), "val")


def test_split_folders_with_images_and_labels_inside(tmp_path):
    write_image(tmp_path / "train/images/a.jpg", width=100, height=50)
    write(tmp_path / "train/labels/a.txt", "0 0.5 0.5 0.2 0.4\n")
    write(tmp_path / "classes.txt", "dog\n")
    assert detect_format(tmp_path) == "yolo"
    split = read_yolo(tmp_path, "train")
    torch.testing.assert_close(split.records[0].boxes, torch.tensor([[40.0, 15, 60, 35]]))
    with pytest.raises(DataError, match="no images/val/ or val/images/ folder"):
        read_yolo(tmp_path, "val")


def test_data_yaml_paths_lists_and_roboflow_parent_paths(tmp_path):
    write_image(tmp_path / "valid/images/a.png", width=100, height=50)
    write(tmp_path / "valid/labels/a.txt", "0 0.5 0.5 0.2 0.4\n")
    write_image(tmp_path / "pool/images/b.png", width=100, height=50)
    write(tmp_path / "pool/labels/b.txt", "0 0.5 0.5 0.4 0.4\n")
    write(tmp_path / "train.txt", "./pool/images/b.png\npool/images/missing.png\n")
    write(tmp_path / "data.yaml", "train: train.txt\nval: ../valid/images\nnames: [dog]\n")
    assert yolo_splits(tmp_path) == {
        "train": tmp_path / "train.txt",
        "val": tmp_path / "valid/images",
    }
    val = read_yolo(tmp_path, "val")
    torch.testing.assert_close(val.records[0].boxes, torch.tensor([[40.0, 15, 60, 35]]))
    report = Report()
    train = read_yolo(tmp_path, "train", report)
    assert [r.image.name for r in train.records] == ["b.png"]
    assert report.items[MISSING_IMAGE] == [
        f"{tmp_path / 'pool/images/missing.png'}: listed but not found"
    ]
    write(tmp_path / "data.yaml", "train: nowhere/images\nnames: [dog]\n")
    with pytest.raises(DataError, match="data.yaml: train: 'nowhere/images' not found"):
        read_yolo(tmp_path, "train")


def test_label_path_swaps_the_last_images_folder_below_the_root(tmp_path):
    root = tmp_path / "images"  # an 'images' folder above the root is left alone
    assert (
        label_path(root / "images/train/images/a.b.jpg", root)
        == root / "images/train/labels/a.b.txt"
    )
    assert label_path(root / "photos/a.jpg", root) == root / "photos/a.txt"


def test_sizes_come_from_the_header_after_exif_rotation(tmp_path):
    path = tmp_path / "images/train/a.jpg"
    path.parent.mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 100 x 50, shown rotated: 50 wide, 100 high
    Image.new("RGB", (100, 50)).save(path, exif=exif)
    write(tmp_path / "labels/train/a.txt", "0 0.5 0.5 0.2 0.4\n")
    write(tmp_path / "classes.txt", "dog\n")
    rec = read_yolo(tmp_path, "train").records[0]
    assert rec.size == (100, 50)
    torch.testing.assert_close(rec.boxes, torch.tensor([[20.0, 30, 30, 70]]))


def test_an_image_that_is_not_one_is_reported_and_skipped(tmp_path):
    root = yolo_layout(tmp_path)
    (root / "images/val/e.png").write_bytes(b"not a png")
    report = Report()
    assert read_yolo(root, "val", report).records == []
    assert report.items[UNREADABLE_IMAGE][0].startswith(f"{root / 'images/val/e.png'}: unreadable")


def test_write_yolo_normalises_clips_and_reads_back(tmp_path):
    img = write_image(tmp_path / "src/a.png", width=100, height=50)
    rec = Record.make(img, [[40, 15, 60, 35], [90, 40, 120, 60], [1, 1, 2, 2]], [1, 2, 2])
    root = write_yolo(tmp_path / "out", "train", [rec], ["dog", "cat"])
    rows = (root / "labels/train/a.txt").read_text().splitlines()
    assert rows == ["0 0.5 0.5 0.2 0.4", "1 0.95 0.9 0.1 0.2", "1 0.015 0.03 0.01 0.02"]
    assert (root / "data.yaml").read_text() == "train: images/train\nnames:\n- dog\n- cat\n"
    write_yolo(root, "val", [Record.make(img, [], [])], ["dog", "cat"])
    assert (root / "labels/val/a.txt").read_text() == ""
    back = read_yolo(root, "train").records[0]
    torch.testing.assert_close(
        back.boxes, torch.tensor([[40.0, 15, 60, 35], [90, 40, 100, 50], [1, 1, 2, 2]])
    )
    assert yolo_splits(root) == {"train": root / "images/train", "val": root / "images/val"}


VALID = b"0 0.5 0.5 0.2 0.4\n1 0.1 0.1 0.2 0.2\n"


@settings(max_examples=150, deadline=None)
@given(data=corrupted(VALID))
def test_parse_yolo_txt_gives_labels_or_a_data_error_naming_the_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "a.txt"
        txt.write_bytes(data)
        try:
            parsed = parse_yolo_txt(txt, 100, 50)
        except DataError as e:
            assert_names_a_file(str(e), txt)
            return
        assert parsed.boxes.shape == (len(parsed.lines), 4) and torch.isfinite(parsed.boxes).all()


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory):
    return yolo_layout(tmp_path_factory.mktemp("yolo"))


YAML = b"train: images/train\nval: images/val\nnames: {0: dog, 1: cat}\n"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    target_data=st.one_of(
        st.tuples(st.just("labels/train/a.txt"), corrupted(VALID)),
        st.tuples(st.just("data.yaml"), corrupted(YAML)),
    )
)
def test_read_yolo_on_corrupted_files_gives_a_split_or_a_data_error(yolo_root, target_data):
    target, data = target_data
    original = (yolo_root / target).read_bytes()
    (yolo_root / target).write_bytes(data)
    try:
        report = Report()
        split = read_yolo(yolo_root, "train", report)
    except DataError as e:
        assert_names_a_file(str(e), yolo_root)
    else:
        assert_valid_split(split)
        for entries in report.items.values():
            for entry in entries:
                assert_names_a_file(entry, yolo_root)
        if target.endswith(".txt") and report.count(BAD_LABEL_FILE):
            assert "a.png" not in [r.image.name for r in split.records]
    finally:
        (yolo_root / target).write_bytes(original)
