"""``tinyssd data check``: each problem kind counted, in every layout; training survives them."""

import json
import os
import shutil
from pathlib import Path

import pytest
from fixtures import write_image, write_tiny_bananas

import tinyssd
from tinyssd.cli import main
from tinyssd.data import DataError
from tinyssd.data.base import (
    AMBIGUOUS_IMAGE,
    BAD_BOX,
    BAD_LABEL_FILE,
    BAD_SPLIT,
    CLASS_NAME,
    DUPLICATE_IMAGE,
    MISSING_IMAGE,
    NO_LABELS,
    OUTSIDE_BOX,
    SPLIT_LEAK,
    TOO_LARGE_IMAGE,
    UNKNOWN_CLASS,
    UNREADABLE_IMAGE,
)
from tinyssd.data.check import check_dataset

W, H = 48, 40
CLASSES = ["apple", "pear"]
UNKNOWN = 5  # a class index with no name
GOOD = (4, 4, 20, 20)  # xyxy, 0-based, x2/y2 exclusive
# image name -> (what the file holds, [(class index, box)]); None: no image file
TRAIN = {
    "good.png": ("png", [(0, GOOD)]),
    "trunc.png": ("truncated", [(0, GOOD)]),
    "fake.png": ("text", [(1, GOOD)]),
    "badbox.png": ("png", [(0, GOOD), (0, (20, 4, 10, 20)), (1, (4, 20, 20, 10))]),
    "outside.png": ("png", [(1, (30, 10, 60, 30))]),
    "unknown.png": ("png", [(0, GOOD), (UNKNOWN, GOOD)]),
    "negative.png": ("png", []),  # no label file or entry at all
    "ghost.png": (None, [(0, GOOD)]),
}
VAL = {"v1.png": ("png", [(0, GOOD)]), "v2.png": ("png", [(1, (10, 10, 30, 30))])}
EXPECTED = {
    UNREADABLE_IMAGE: 2,  # trunc.png, fake.png
    BAD_BOX: 2,  # x1 >= x2 and y1 >= y2 in badbox.png
    OUTSIDE_BOX: 1,
    UNKNOWN_CLASS: 1,
    NO_LABELS: 1,
    MISSING_IMAGE: 1,  # ghost
    BAD_LABEL_FILE: 1,  # broken
}


def write_images(folder: Path, spec: dict) -> None:
    for i, (name, (kind, _)) in enumerate(spec.items()):
        if kind is None:
            continue
        path = write_image(folder / name, W, H, seed=i)
        if kind == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif kind == "text":
            path.write_text("this is not an image\n")


def bananas_bad(root: Path) -> Path:
    for split, spec in (("train", TRAIN), ("val", VAL)):
        folder = root / f"bananas_{split}"
        write_images(folder / "images", spec)
        rows = [
            f"{name},{label},{','.join(map(str, box))}"
            for name, (kind, boxes) in spec.items()
            for label, box in boxes
        ]
        if split == "train":
            rows.append("broken.png,0,a,b,c,d")
        (folder / "label.csv").write_text("\n".join(["img_name,label,xmin,ymin,xmax,ymax", *rows]))
    (root / "classes.txt").write_text("\n".join(CLASSES))
    return root


def voc_bad(root: Path) -> Path:
    names = [*CLASSES, "plum"]
    for split, spec in (("train", TRAIN), ("val", VAL)):
        write_images(root / "JPEGImages", spec)
        for name, (_, boxes) in spec.items():
            if not boxes:
                continue
            objects = "".join(
                f"<object><name>{names[min(label, 2)]}</name><bndbox><xmin>{x1 + 1}</xmin>"
                f"<ymin>{y1 + 1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for label, (x1, y1, x2, y2) in boxes
            )
            xml = root / "Annotations" / f"{Path(name).stem}.xml"
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(f"<annotation>{objects}</annotation>")
        ids = [Path(name).stem for name in spec] + (["broken"] if split == "train" else [])
        (root / "ImageSets/Main").mkdir(parents=True, exist_ok=True)
        (root / f"ImageSets/Main/{split}.txt").write_text("\n".join(ids))
    write_image(root / "JPEGImages/broken.png", W, H)
    (root / "Annotations/broken.xml").write_text("<annotation><object><name>apple</name>")
    (root / "classes.txt").write_text("\n".join(CLASSES))
    return root


def coco_bad(root: Path) -> Path:
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]
    for split, spec in (("train", TRAIN), ("val", VAL)):
        write_images(root / "images" / split, spec)
        images, annotations = [], []
        for image_id, (name, (_, boxes)) in enumerate(spec.items(), start=1):
            images.append({"id": image_id, "file_name": name, "width": W, "height": H})
            for label, (x1, y1, x2, y2) in boxes:
                category = 99 if label == UNKNOWN else label + 1
                bbox = [x1, y1, x2 - x1, y2 - y1]
                annotations.append({"image_id": image_id, "category_id": category, "bbox": bbox})
        if split == "train":
            annotations.append({"image_id": 1, "category_id": 1, "bbox": "broken"})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(exist_ok=True)
        (root / f"annotations/instances_{split}.json").write_text(json.dumps(data))
    return root


def yolo_bad(root: Path) -> Path:
    for split, spec in (("train", TRAIN), ("val", VAL)):
        write_images(root / "images" / split, spec)
        labels = root / "labels" / split
        labels.mkdir(parents=True)
        for name, (_, boxes) in spec.items():
            if boxes:
                rows = [
                    f"{label} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} "
                    f"{(y2 - y1) / H}"
                    for label, (x1, y1, x2, y2) in boxes
                ]
                (labels / f"{Path(name).stem}.txt").write_text("\n".join(rows))
    write_image(root / "images/train/broken.png", W, H)
    (root / "labels/train/broken.txt").write_text("0 0.5 zzz 0.1 0.1\n")
    (root / "data.yaml").write_text(f"train: images/train\nval: images/val\nnames: {CLASSES}\n")
    return root


BAD = {"bananas": bananas_bad, "voc": voc_bad, "coco": coco_bad, "yolo": yolo_bad}


@pytest.mark.parametrize("fmt", BAD)
def test_check_counts_every_problem_kind_in_every_layout(tmp_path, fmt):
    root = BAD[fmt](tmp_path / fmt)
    report = check_dataset(root)
    assert report.format == fmt
    assert {kind: report.count(kind) for kind in EXPECTED} == EXPECTED
    assert sum(len(entries) for entries in report.items.values()) == sum(EXPECTED.values())
    assert report.splits["train"].images == 5 and report.splits["train"].boxes == 4
    assert report.splits["val"].images == 2 and report.splits["val"].boxes == 2
    assert any("trunc.png" in e for e in report.items[UNREADABLE_IMAGE])
    assert any("fake.png" in e for e in report.items[UNREADABLE_IMAGE])
    assert any("ghost" in e for e in report.items[MISSING_IMAGE])
    assert any("broken" in e or "'bbox'" in e for e in report.items[BAD_LABEL_FILE])
    assert "outside.png" in report.items[OUTSIDE_BOX][0]
    assert "negative.png" in report.items[NO_LABELS][0]
    assert report.exit_code() == 0  # all handled the same way every time: counted, no error


@pytest.mark.parametrize("fmt", BAD)
def test_the_check_command_prints_each_kind_and_exits_0(tmp_path, capsys, fmt):
    root = BAD[fmt](tmp_path / fmt)
    assert main(["data", "check", str(root), "--first", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{root}: {fmt} layout\n  train: 5 usable images, 4 boxes\n")
    for kind, count in EXPECTED.items():
        assert f"{count:6d}  {kind}\n" in out
    assert "     ... and 1 more" in out  # --first 1 with two unreadable images


@pytest.mark.parametrize("fmt", BAD)
def test_training_completes_on_bad_data(tmp_path, fmt):
    root = BAD[fmt](tmp_path / fmt)
    run = tinyssd.train(
        data=str(root),
        epochs=1,
        batch_size=4,
        image_size=64,
        out=str(tmp_path / "run"),
        progress=False,
        recipe="chapter",  # about the data: the recipe with the fewest moving parts
    )
    config = json.loads((Path(run) / "config.json").read_text())
    assert config["classes"] == CLASSES
    assert (Path(run) / "last.safetensors").is_file()


def test_a_clean_data_set_says_so(tmp_path):
    root = write_tiny_bananas(tmp_path, n_train=3, n_val=2, size=48)
    report = check_dataset(root)
    assert not report
    assert report.summary().endswith("\nno problems found")


def test_an_unreadable_split_is_reported_and_the_others_still_checked(tmp_path):
    root = coco_bad(tmp_path)
    (root / "annotations/instances_val.json").write_text('{"images": [')
    report = check_dataset(root, format="coco")
    assert report.items[BAD_SPLIT] == [
        f"{root / 'annotations/instances_val.json'}:1: not valid JSON (Expecting value)"
    ]
    assert list(report.splits) == ["train"] and report.count(UNREADABLE_IMAGE) == 2


def test_a_flat_folder_read_as_train_and_val_is_checked_once(tmp_path):
    write_image(tmp_path / "a.png", W, H)
    (tmp_path / "a.xml").write_text(
        "<annotation><object><name>apple</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>60</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    report = check_dataset(tmp_path)
    assert report.count(OUTSIDE_BOX) == 1
    assert "  val: the same files as train" in report.summary()


def test_no_folder_or_no_layout_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        check_dataset(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no known data layout"):
        check_dataset(tmp_path)


def test_an_image_too_large_for_pil_is_reported_not_raised(tmp_path, monkeypatch):
    root = write_tiny_bananas(tmp_path, n_train=2, n_val=1, size=48)
    monkeypatch.setattr("PIL.Image.MAX_IMAGE_PIXELS", 100)  # 48 x 48 is a "decompression bomb"
    report = check_dataset(root)
    assert report.count(TOO_LARGE_IMAGE) == 3 and report.count(UNREADABLE_IMAGE) == 0
    assert "too large to decode: Image size (2304 pixels)" in report.items[TOO_LARGE_IMAGE][0]


def test_plots_draw_the_labels_and_each_levels_matched_anchors(tmp_path, monkeypatch, capsys):
    data = write_tiny_bananas(tmp_path / "data", n_train=6, n_val=2, size=64)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "check").mkdir(parents=True)  # an earlier check's: left alone
    assert main(["data", "check", str(data), "--model", "tiny_ssd", "--plots"]) == 0
    folder = tmp_path / "runs" / "check2"
    names = ["labels.png", "anchors_1.png", "anchors_2.png", "anchors_3.png", "anchors_4.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for name in names:
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots: runs/check2/labels.png" in capsys.readouterr().out
    assert not any((tmp_path / "runs" / "check").iterdir())


def _coco(root: Path, names: list[str], files: list[str]) -> None:
    """A COCO train split: one box of class 1 per image entry, ``names`` as categories."""
    for name in dict.fromkeys(files):
        write_image(root / "images/train" / name, W, H)
    data = {
        "images": [{"id": i, "file_name": f} for i, f in enumerate(files, start=1)],
        "annotations": [
            {"image_id": i, "category_id": 1, "bbox": [1, 1, 9, 9]}
            for i in range(1, len(files) + 1)
        ],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names, start=1)],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations/instances_train.json").write_text(json.dumps(data))


def _voc(root: Path, train: list[str], val: list[str], images: list[str]) -> None:
    """A VOC set: ``images`` in JPEGImages/, an XML per stem, the split lists."""
    for name in images:
        write_image(root / "JPEGImages" / name, W, H)
    xml = (
        "<annotation><object><name>apple</name><bndbox><xmin>2</xmin><ymin>2</ymin>"
        "<xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    for stem in {Path(name).stem for name in images}:
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / f"Annotations/{stem}.xml").write_text(xml)
    (root / "ImageSets/Main").mkdir(parents=True)
    for split, ids in (("train", train), ("val", val)):
        (root / f"ImageSets/Main/{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _csv(root: Path, labels: list[str]) -> None:
    write_image(root / "bananas_train/images/0.png", W, H)
    rows = "".join(f"0.png,{label},1,1,9,9\n" for label in labels)
    (root / "bananas_train/label.csv").write_text(f"img_name,label,xmin,ymin,xmax,ymax\n{rows}")


ISSUES = {  # what data check must say about each, and its exit code
    "coco: two categories named alike": (
        lambda r: _coco(r, ["apple", "apple"], ["a.png"]),
        BAD_SPLIT,
        "instances_train.json: categories[1]: class name 'apple' is also categories[0]'s",
        2,
    ),
    "coco: an empty category name": (
        lambda r: _coco(r, ["apple", ""], ["a.png"]),
        BAD_SPLIT,
        "instances_train.json: categories[1]: empty class name",
        2,
    ),
    "coco: a newline in a name": (
        lambda r: _coco(r, ["apple", "a\nb"], ["a.png"]),
        CLASS_NAME,
        "instances_train.json: category 2 'a\\nb': holds a control character",
        0,
    ),
    "coco: a comma in a name": (
        lambda r: _coco(r, ["apple", "a,b"], ["a.png"]),
        CLASS_NAME,
        "instances_train.json: category 2 'a,b': holds a comma (--classes-map cannot name it)",
        0,
    ),
    "coco: one file_name twice": (
        lambda r: _coco(r, ["apple"], ["a.png", "a.png"]),
        DUPLICATE_IMAGE,
        "instances_train.json: image id 2: file_name 'a.png' is listed already as image id 1",
        2,
    ),
    "voc: one id in train and val": (
        lambda r: _voc(r, ["0", "1"], ["1"], ["0.png", "1.png"]),
        SPLIT_LEAK,
        "JPEGImages/1.png: read by train (ROOT/ImageSets/Main/train.txt) and by val "
        "(ROOT/ImageSets/Main/val.txt)",
        2,
    ),
    "voc: one id, two images": (
        lambda r: _voc(r, ["0"], ["1"], ["0.jpg", "0.png", "1.png"]),
        AMBIGUOUS_IMAGE,
        "JPEGImages/0.png: 0.xml is read with 0.jpg; rename one",
        2,
    ),
    "csv: a label 1.0": (
        lambda r: _csv(r, ["0", "1.0"]),
        BAD_LABEL_FILE,
        "bananas_train/label.csv:3: '1.0' is not a class index",
        0,
    ),
    "csv: a label -1": (
        lambda r: _csv(r, ["0", "-1"]),
        BAD_LABEL_FILE,
        "bananas_train/label.csv:3: '-1' is not a class index",
        0,
    ),
    "csv: a label in Arabic-Indic digits": (
        lambda r: _csv(r, ["0", "\u0663"]),
        BAD_LABEL_FILE,
        "bananas_train/label.csv:3: '\u0663' is not a class index",
        0,
    ),
}


@pytest.mark.parametrize("issue", ISSUES)
def test_each_reported_issue_is_named_with_its_file_and_entry_and_its_severity(tmp_path, issue):
    build, kind, says, code = ISSUES[issue]
    root = tmp_path / "data"
    build(root)
    report = check_dataset(root)
    entries = report.items[kind]
    assert len(entries) == 1, report.summary()
    assert entries[0].startswith(str(root)) and "\n" not in entries[0]
    assert says.replace("ROOT", str(root)) in entries[0]
    assert report.exit_code() == code
    kind_line = f"{'error: ' if code else ''}{kind}"
    assert f"     1  {kind_line}\n" in report.summary()


def test_errors_raise_one_line_naming_the_folder_and_warnings_do_not(tmp_path):
    _voc(tmp_path / "leak", ["0"], ["0"], ["0.png"])
    with pytest.raises(DataError, match=r"leak: 1 error\(s\) listed above") as e:
        check_dataset(tmp_path / "leak").raise_for_errors()
    assert "\n" not in str(e.value)
    _csv(tmp_path / "csv", ["0", "-1"])
    check_dataset(tmp_path / "csv").raise_for_errors()


def test_a_hard_linked_copy_in_another_split_is_a_leak(tmp_path):
    root = tmp_path / "coco"
    for split in ("train", "val"):
        data = {
            "images": [{"id": 1, "file_name": f"{split}.png"}],
            "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}],
            "categories": [{"id": 1, "name": "apple"}],
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / f"annotations/instances_{split}.json").write_text(json.dumps(data))
    write_image(root / "images/train/train.png", W, H)
    (root / "images/val").mkdir(parents=True)
    os.link(root / "images/train/train.png", root / "images/val/val.png")
    report = check_dataset(root)
    assert report.items[SPLIT_LEAK] == [
        f"{root / 'images/val/val.png'}: read by train "
        f"({root / 'annotations/instances_train.json'}) and by val "
        f"({root / 'annotations/instances_val.json'})"
    ]


def _deny_listing(monkeypatch, folder: Path) -> None:
    """``os.scandir`` of ``folder`` fails as after ``chmod 000`` (root bypasses the mode)."""
    scandir = os.scandir

    def denied(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)


def test_an_annotations_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch, capsys):
    _voc(tmp_path, ["0"], [], ["0.png"])
    shutil.rmtree(tmp_path / "ImageSets")
    _deny_listing(monkeypatch, tmp_path / "Annotations")
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"tinyssd: error: {tmp_path / 'Annotations'}: cannot list this folder (Permission "
        f"denied), so no data layout can be found in {tmp_path}; check its permissions\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder whatever its mode")
def test_an_annotations_folder_without_permissions_is_named(tmp_path):
    _voc(tmp_path, ["0"], [], ["0.png"])
    shutil.rmtree(tmp_path / "ImageSets")
    (tmp_path / "Annotations").chmod(0)
    try:
        with pytest.raises(DataError, match=r"Annotations: cannot list this folder"):
            check_dataset(tmp_path)
    finally:
        (tmp_path / "Annotations").chmod(0o755)


def test_data_check_exits_2_when_it_finds_an_error(tmp_path, capsys):
    _voc(tmp_path, ["0"], ["0"], ["0.png"])  # the same image in train and val: a leak
    assert main(["data", "check", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "error: image in two splits" in out
    assert len(err.strip().splitlines()) == 1 and err.startswith("tinyssd: error: ")


def test_data_check_refuses_an_image_size_the_model_cannot_take(tmp_path, capsys):
    root = write_tiny_bananas(tmp_path, n_train=2, n_val=1, size=48)
    assert main(["data", "check", str(root), "--model", "tiny_ssd", "--image-size", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinyssd: error: --image-size 8: tiny_ssd needs at least")
    assert len(err.strip().splitlines()) == 1
