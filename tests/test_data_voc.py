"""Pascal VOC: 1-based inclusive boxes read and written exactly, both layouts, bad files."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import assert_names_a_file, assert_valid_split, corrupted, write_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyssd.data import DataError, Record, Report, detect_format, parse_voc_xml, read_voc
from tinyssd.data.base import BAD_BOX, BAD_LABEL_FILE, MISSING_IMAGE, NO_LABELS, UNKNOWN_CLASS
from tinyssd.data.voc import voc_splits, write_voc


def voc_xml(*objects, size=(48, 64)):
    """An annotation; each object is (name, xmin, ymin, xmax, ymax[, difficult])."""
    body = "".join(
        f"<object><name>{o[0]}</name><difficult>{o[5] if len(o) > 5 else 0}</difficult>"
        f"<bndbox><xmin>{o[1]}</xmin><ymin>{o[2]}</ymin><xmax>{o[3]}</xmax><ymax>{o[4]}</ymax>"
        "</bndbox></object>"
        for o in objects
    )
    h, w = size
    return (
        f"<annotation><filename>x.png</filename><size><width>{w}</width><height>{h}</height>"
        f"<depth>3</depth></size>{body}</annotation>"
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_1_based_inclusive_boxes_become_0_based_with_exclusive_ends(tmp_path):
    xml = write(tmp_path / "a.xml", voc_xml(("dog", 1, 2, 10, 20), ("cat", 5.5, 3, 64, 48, 1)))
    boxes, names, difficult, size = parse_voc_xml(xml)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 1, 10, 20], [4.5, 2, 64, 48]]))
    assert names == ["dog", "cat"]
    assert difficult.tolist() == [False, True]
    assert size == (48, 64)


def test_an_annotation_without_objects_or_size_parses_to_nothing(tmp_path):
    xml = write(tmp_path / "a.xml", "<annotation><filename>a.jpg</filename></annotation>")
    ann = parse_voc_xml(xml)
    assert ann.boxes.shape == (0, 4) and ann.names == [] and ann.size is None


@pytest.mark.parametrize(
    "text, says",
    [
        ("<annotation><object>", "not valid XML"),
        ("\xff\xfe garbage", "not valid XML"),
        ("<html/>", "expected <annotation>"),
        (
            "<annotation><object><name>a</name></object></annotation>",
            "object 1 .* has no <bndbox>",
        ),
        (voc_xml(("a", 1, 1, "ten", 5)), "needs numbers"),
        (voc_xml(("a", 1, 1, "nan", 5)), "needs numbers"),
        (voc_xml(("a", 1, 1, "1e39", 5)), "needs numbers"),
        (voc_xml(("", 1, 1, 2, 2)), "object 1 has no <name>"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(tmp_path, text, says):
    xml = write(tmp_path / "bad.xml", text)
    with pytest.raises(DataError, match=says) as e:
        parse_voc_xml(xml)
    assert_names_a_file(str(e.value), xml)


def imagesets_layout(root: Path) -> Path:
    """train: 0 (dog + cat), 1 (no XML), ghost (no image); val: 2 (bird, only in val)."""
    for i in range(3):
        write_image(root / "JPEGImages" / f"{i}.jpg", seed=i)
    write(root / "Annotations/0.xml", voc_xml(("dog", 1, 2, 10, 20), ("cat", 11, 12, 30, 40, 1)))
    write(root / "Annotations/2.xml", voc_xml(("bird", 3, 4, 5, 6)))
    write(root / "Annotations/ghost.xml", voc_xml(("dog", 1, 1, 2, 2)))
    write(root / "Annotations/unlisted.xml", voc_xml(("fish", 1, 1, 2, 2)))
    write(root / "ImageSets/Main/train.txt", "0\n1\nghost\n")
    write(root / "ImageSets/Main/val.txt", "2\n")
    return root


def test_imagesets_layout_reads_the_listed_ids_with_names_from_all_annotations(tmp_path):
    root = imagesets_layout(tmp_path)
    assert detect_format(root) == "voc"
    assert voc_splits(root) == {s: root / f"ImageSets/Main/{s}.txt" for s in ("train", "val")}
    report = Report()
    train = read_voc(root, "train", report)
    assert train.classes == ["bird", "cat", "dog", "fish"]
    assert [r.image.name for r in train.records] == ["0.jpg", "1.jpg"]
    rec = train.records[0]
    torch.testing.assert_close(rec.boxes, torch.tensor([[0.0, 1, 10, 20], [10, 11, 30, 40]]))
    assert rec.labels.tolist() == [3, 2] and rec.difficult.tolist() == [False, True]
    assert rec.size == (48, 64)
    assert len(train.records[1].labels) == 0
    assert report.items[NO_LABELS] == [str(root / "JPEGImages/1.jpg")]
    assert report.items[MISSING_IMAGE] == [
        f"{root / 'Annotations/ghost.xml'}: no image with this name"
    ]
    val = read_voc(root, "val")
    assert val.classes == train.classes and val.records[0].labels.tolist() == [1]


def test_a_missing_split_list_is_an_error_naming_it(tmp_path):
    root = imagesets_layout(tmp_path)
    with pytest.raises(DataError, match="test.txt: split list not found"):
        read_voc(root, "test")


def test_flat_folder_is_every_split_until_split_folders_exist(tmp_path):
    flat = tmp_path / "flat"
    write_image(flat / "a.JPG")
    write(flat / "a.xml", voc_xml(("dog", 1, 1, 9, 9)))
    write_image(flat / "b.png")
    assert detect_format(flat) == "voc"
    assert voc_splits(flat) == {"train": flat, "val": flat}
    train, val = read_voc(flat, "train"), read_voc(flat, "val")
    assert [r.image.name for r in train.records] == [r.image.name for r in val.records]
    assert [r.image.name for r in train.records] == ["a.JPG", "b.png"]

    split = tmp_path / "split"
    write_image(split / "train/a.png")
    write(split / "train/a.xml", voc_xml(("dog", 1, 1, 9, 9)))
    write_image(split / "val/b.png")
    write(split / "val/b.xml", voc_xml(("cat", 2, 2, 8, 8)))
    assert voc_splits(split) == {"train": split / "train", "val": split / "val"}
    assert [r.image.name for r in read_voc(split, "val").records] == ["b.png"]
    assert read_voc(split, "train").classes == ["cat", "dog"]


def test_classes_txt_fixes_names_and_order_and_other_names_are_reported(tmp_path):
    write(tmp_path / "classes.txt", "zebra\ndog\n")
    write_image(tmp_path / "a.png")
    write(tmp_path / "a.xml", voc_xml(("dog", 1, 1, 9, 9), ("plum", 1, 1, 5, 5)))
    report = Report()
    split = read_voc(tmp_path, "train", report)
    assert split.classes == ["zebra", "dog"]
    assert split.records[0].labels.tolist() == [2]
    assert report.items[UNKNOWN_CLASS] == [f"{tmp_path / 'a.xml'}: object 2: class 'plum'"]


def test_empty_boxes_are_dropped_and_unparsable_files_skip_their_image(tmp_path):
    write_image(tmp_path / "a.png")
    write(
        tmp_path / "a.xml", voc_xml(("dog", 5, 1, 4, 9), ("dog", 1, 9, 9, 9), ("dog", 1, 1, 3, 3))
    )
    write_image(tmp_path / "b.png")
    write(tmp_path / "b.xml", "<annotation><object>")
    report = Report()
    split = read_voc(tmp_path, "train", report)
    assert [r.image.name for r in split.records] == ["a.png"]
    # xmin 5 > xmax 4 is empty, but ymin 9 = ymax 9 is one row of pixels: y1 = 8 < y2 = 9
    torch.testing.assert_close(split.records[0].boxes, torch.tensor([[0.0, 8, 9, 9], [0, 0, 3, 3]]))
    assert report.count(BAD_BOX) == 1
    assert "object 1" in report.items[BAD_BOX][0]
    assert report.items[BAD_LABEL_FILE][0].startswith(f"{tmp_path / 'b.xml'}:1: not valid XML")


def test_write_voc_inverts_the_box_convention_exactly(tmp_path):
    image = write_image(tmp_path / "src/cat.png", width=64, height=48)
    rec = Record.make(
        image,
        [[0, 1, 10, 20], [4.5, 2, 64, 48], [1, 1, 5, 5]],
        [1, 2, 2],
        difficult=[False, True, False],
        iscrowd=[False, False, True],
    )
    root = write_voc(tmp_path / "out", "train", [rec], ["dog", "cat"])
    xml = (root / "Annotations/cat.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<ymin>2</ymin>" in xml and "<xmax>10</xmax>" in xml
    assert "<xmin>5.5</xmin>" in xml and "<width>64</width>" in xml and "<height>48</height>" in xml
    back = read_voc(root, "train")
    assert back.classes == ["dog", "cat"]
    out = back.records[0]
    torch.testing.assert_close(out.boxes, rec.boxes)
    assert out.labels.tolist() == [1, 2, 2]
    assert out.difficult.tolist() == [False, True, True]  # the crowd region became difficult
    assert (root / "JPEGImages/cat.png").read_bytes() == image.read_bytes()
    assert (root / "ImageSets/Main/train.txt").read_text() == "cat\n"


def test_images_of_two_splits_with_one_name_do_not_overwrite_each_other(tmp_path):
    a = write_image(tmp_path / "a/0.png", seed=1)
    b = write_image(tmp_path / "b/0.png", seed=2)
    out = tmp_path / "out"
    write_voc(out, "train", [Record.make(a, [[0, 0, 4, 4]], [1])], ["dog"])
    write_voc(out, "val", [Record.make(b, [[1, 1, 5, 5]], [1])], ["dog"])
    assert (out / "ImageSets/Main/val.txt").read_text() == "val_0\n"
    assert (out / "JPEGImages/val_0.png").read_bytes() == b.read_bytes()
    torch.testing.assert_close(
        read_voc(out, "val").records[0].boxes, torch.tensor([[1.0, 1, 5, 5]])
    )


VALID = voc_xml(("dog", 1, 2, 10, 20), ("cat", 5, 3, 30, 40, 1)).encode()


@settings(max_examples=150, deadline=None)
@given(data=corrupted(VALID))
def test_parse_voc_xml_gives_an_annotation_or_a_data_error_naming_the_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "a.xml"
        xml.write_bytes(data)
        try:
            ann = parse_voc_xml(xml)
        except DataError as e:
            assert_names_a_file(str(e), xml)
            return
        assert ann.boxes.shape == (len(ann.names), 4) and torch.isfinite(ann.boxes).all()


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return imagesets_layout(tmp_path_factory.mktemp("voc"))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=corrupted(VALID), target=st.sampled_from(["Annotations/0.xml", "ImageSets/Main/train.txt"])
)
def test_read_voc_on_corrupted_files_gives_a_split_or_a_data_error(voc_root, data, target):
    original = (voc_root / target).read_bytes()
    (voc_root / target).write_bytes(data)
    try:
        report = Report()
        split = read_voc(voc_root, "train", report)
    except DataError as e:
        assert_names_a_file(str(e), voc_root)
    else:
        assert_valid_split(split)
        for entries in report.items.values():
            for entry in entries:
                assert_names_a_file(entry, voc_root)
    finally:
        (voc_root / target).write_bytes(original)


@pytest.mark.parametrize(
    "flag, difficult",
    [("0", False), ("1", True), ("false", False), ("true", True), (" 1 ", True), ("", False)],
)
def test_difficult_is_read_as_voc_means_it(tmp_path, flag, difficult):
    xml = tmp_path / "a.xml"
    xml.write_text(voc_xml(("dog", 1, 1, 9, 9, flag)))
    assert parse_voc_xml(xml).difficult.tolist() == [difficult]


def test_a_difficult_that_is_no_flag_is_a_one_line_error(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(voc_xml(("dog", 1, 1, 9, 9, "maybe")))
    with pytest.raises(DataError, match=r"object 1 \('dog'\): <difficult> 'maybe' is not a 0/1"):
        parse_voc_xml(xml)


def write_exif_image(path, width, height, orientation, box):
    """A black image stored ``width`` x ``height``, white inside ``box`` (xyxy stored pixels)."""
    from PIL import Image

    arr = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)
    return path


def white_box(image):
    """xyxy of the white pixels of a decoded ``Tensor[3, H, W]``."""
    ys, xs = torch.nonzero(image[0] > 127, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_boxes_annotated_before_the_exif_rotation_turn_with_the_image(tmp_path, orientation):
    from tinyssd.data.base import EXIF_FRAME, read_image

    stored = (4, 6, 20, 14)  # xyxy in the stored 40 x 30 pixels
    image = write_exif_image(tmp_path / "a.png", 40, 30, orientation, stored)
    xml = voc_xml(("dog", 5, 7, 20, 14), size=(30, 40))  # <size> is the stored image's
    (tmp_path / "a.xml").write_text(xml)
    report = Report()
    rec = read_voc(tmp_path, "train", report).records[0]
    assert rec.boxes[0].tolist() == white_box(read_image(image))
    assert rec.size == (40, 30)
    assert report.items[EXIF_FRAME] == [
        f"{image}: annotated as 40x30, shown 30x40 (EXIF orientation {orientation})"
    ]


def test_boxes_annotated_on_the_shown_image_stay(tmp_path):
    from tinyssd.data.base import EXIF_FRAME

    write_exif_image(tmp_path / "a.png", 40, 30, 6, (4, 6, 20, 14))
    (tmp_path / "a.xml").write_text(voc_xml(("dog", 5, 7, 20, 14), size=(40, 30)))
    report = Report()
    rec = read_voc(tmp_path, "train", report).records[0]
    assert rec.boxes[0].tolist() == [4, 6, 20, 14] and report.count(EXIF_FRAME) == 0


@pytest.mark.parametrize("layout", ["flat", "imagesets"])
def test_an_annotation_with_two_images_is_read_with_the_first_and_the_other_reported(
    tmp_path, layout
):
    from tinyssd.data.base import AMBIGUOUS_IMAGE

    if layout == "flat":
        images, xml = tmp_path, tmp_path / "0.xml"
    else:
        images, xml = tmp_path / "JPEGImages", tmp_path / "Annotations/0.xml"
        write(tmp_path / "ImageSets/Main/train.txt", "0\n")
    write_image(images / "0.jpg")
    write_image(images / "0.png", seed=1)
    write(xml, voc_xml(("dog", 1, 1, 9, 9)))
    report = Report()
    split = read_voc(tmp_path, "train", report)
    assert [r.image.name for r in split.records] == ["0.jpg"]
    assert report.items[AMBIGUOUS_IMAGE] == [
        f"{images / '0.png'}: 0.xml is read with 0.jpg; rename one"
    ]


def test_images_of_one_name_without_an_annotation_are_each_a_negative(tmp_path):
    from tinyssd.data.base import AMBIGUOUS_IMAGE

    write_image(tmp_path / "0.jpg")
    write_image(tmp_path / "0.png", seed=1)
    write(tmp_path / "1.xml", voc_xml(("dog", 1, 1, 9, 9)))
    write_image(tmp_path / "1.png")
    report = Report()
    split = read_voc(tmp_path, "train", report)
    assert [r.image.name for r in split.records] == ["0.jpg", "0.png", "1.png"]
    assert report.count(AMBIGUOUS_IMAGE) == 0


def test_an_xml_not_in_utf8_outside_class_names_keeps_its_image(tmp_path):
    # a tool on a Latin-1 system writes the name of caf\xe9.jpg (not UTF-8) into the XML
    latin1 = voc_xml(("dog", 1, 2, 10, 20)).replace("x.png", "caf\xe9.jpg").encode("latin-1")
    write_image(tmp_path / "a.png")
    (tmp_path / "a.xml").write_bytes(latin1)
    write_image(tmp_path / "b.png")
    (tmp_path / "b.xml").write_bytes(voc_xml(("d\xe9g", 1, 2, 10, 20)).encode("latin-1"))
    report = Report()
    split = read_voc(tmp_path, "train", report)
    assert [r.image.name for r in split.records] == ["a.png"]
    assert split.records[0].boxes.tolist() == [[0, 1, 10, 20]]
    assert report.items[BAD_LABEL_FILE] == [
        f"{tmp_path / 'b.xml'}: object 1: <name> is not UTF-8 text"
    ]


def test_a_classes_txt_naming_a_class_twice_is_a_one_line_error(tmp_path):
    write(tmp_path / "classes.txt", "dog\ncat\n\ndog\n")
    write_image(tmp_path / "a.png")
    write(tmp_path / "a.xml", voc_xml(("dog", 1, 1, 9, 9)))
    with pytest.raises(
        DataError, match=r"classes.txt: class 3: class name 'dog' is also class 1's"
    ):
        read_voc(tmp_path, "train")


def test_a_folder_that_cannot_be_listed_is_named_not_read_as_empty(tmp_path, monkeypatch):
    import os

    write_image(tmp_path / "JPEGImages/0.jpg")
    write(tmp_path / "Annotations/0.xml", voc_xml(("dog", 1, 1, 9, 9)))
    locked = tmp_path / "Annotations"
    scandir = os.scandir

    def denied(path="."):  # what chmod 000 does for a user other than root
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(
        DataError, match=r"Annotations: cannot list this folder \(Permission denied\)"
    ):
        read_voc(tmp_path, "train")


def test_names_in_digits_of_other_scripts_sort_without_error(tmp_path):
    for name in ("10.png", "2.png", "\u00b2.png", "\u0663.png"):  # superscript 2, Arabic-Indic 3
        write_image(tmp_path / name)
    write(tmp_path / "2.xml", voc_xml(("dog", 1, 1, 9, 9)))
    names = [r.image.name for r in read_voc(tmp_path, "train").records]
    assert names == ["2.png", "10.png", "\u00b2.png", "\u0663.png"]
