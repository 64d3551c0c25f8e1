"""``tinyssd data check``: each problem kind counted, in every layout; training survives them."""

import json
from pathlib import Path

import pytest
from fixtures import write_image, write_tiny_bananas

import tinyssd
from tinyssd.cli import main
from tinyssd.data import DataError
from tinyssd.data.base import (
    BAD_BOX,
    BAD_LABEL_FILE,
    BAD_SPLIT,
    MISSING_IMAGE,
    NO_LABELS,
    OUTSIDE_BOX,
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
    assert report.count(UNREADABLE_IMAGE) == 3
    assert "decompression bomb" in report.items[UNREADABLE_IMAGE][0]


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
