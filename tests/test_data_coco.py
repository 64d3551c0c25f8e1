"""COCO JSON: xywh to xyxy, non-contiguous category ids, iscrowd, image folders, bad files."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from fixtures import assert_names_a_file, assert_valid_split, corrupted, write_image
from hypothesis import HealthCheck, given, settings

from tinyssd.data import DataError, Record, Report, detect_format, parse_coco_json, read_coco
from tinyssd.data.base import BAD_BOX, BAD_LABEL_FILE, MISSING_IMAGE, NO_LABELS, UNKNOWN_CLASS
from tinyssd.data.coco import coco_splits, write_coco

CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]  # ids neither 1.. nor sorted


def coco(images, annotations, categories=CATEGORIES):
    return {"images": images, "annotations": annotations, "categories": categories}


def image(i, name, w=64, h=48):
    return {"id": i, "file_name": name, "width": w, "height": h}


def box(i, image_id, category_id, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_xywh_boxes_become_xyxy_and_categories_sort_by_id(tmp_path):
    data = coco(
        [image(1, "a.png"), {"id": "b", "file_name": "b.png"}],
        [
            box(1, 1, 7, [10, 20, 30, 40]),
            box(2, "b", 3, [0.5, 1, 2, 3], iscrowd=1),
            box(3, 1, 3, [1, 2, 3]),
            box(4, 1, 3, [1, 2, 3, float("nan")]),
            box(5, 1, 3, [1, 2, 3, "4"]),
            "oops",
        ],
    )
    parsed = parse_coco_json(write_json(tmp_path / "instances.json", data))
    assert parsed.categories == [(3, "cat"), (7, "dog")]
    assert [(im.id, im.file_name, im.size) for im in parsed.images] == [
        (1, "a.png", (48, 64)),
        ("b", "b.png", None),
    ]
    assert [(b.image_id, b.category_id, b.box, b.iscrowd) for b in parsed.boxes] == [
        (1, 7, (10.0, 20.0, 40.0, 60.0), False),
        ("b", 3, (0.5, 1.0, 2.5, 4.0), True),
    ]
    assert parsed.problems == [
        "annotations[2]: 'bbox' is not a list [x, y, width, height]",
        "annotations[3]: nan is not a finite number",
        "annotations[4]: 'bbox' [1, 2, 3, '4'] does not hold 4 numbers",
        "annotations[5]: not an object",
    ]


@pytest.mark.parametrize(
    "text, says",
    [
        ("{", ":1: not valid JSON"),
        ("\xff", "not a UTF-8 JSON file|not valid JSON"),
        ("[1, 2]", "not a COCO file"),
        ('{"images": []}', "no 'categories' list"),
        ('{"images": [], "categories": [{"id": 1}]}', r"categories\[0\] needs an integer 'id'"),
        ('{"images": [], "categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "twice"),
        ('{"images": [], "categories": [], "annotations": {}}', "'annotations' is not a list"),
        ("[" * 100_000, "not usable JSON"),
    ],
)
def test_unusable_files_raise_one_line_naming_the_file(tmp_path, text, says):
    path = tmp_path / "instances_train.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(DataError, match=says) as e:
        parse_coco_json(path)
    assert_names_a_file(str(e.value), path)


def coco_layout(root: Path, folder: str = "images/val2017") -> Path:
    """val: a (dog + crowd cat), b (no annotation), ghost (no file); bad entries in the JSON."""
    write_image(root / folder / "a.png", seed=1)
    write_image(root / folder / "b.png", seed=2)
    data = coco(
        [image(1, "a.png"), image(2, "b.png"), image(3, "ghost.png")],
        [
            box(1, 1, 7, [10, 20, 30, 20]),
            box(2, 1, 3, [0, 0, 5, 5], iscrowd=1, difficult=1),
            box(3, 1, 99, [1, 1, 2, 2]),
            box(4, 1, 3, [1, 1, 0, 2]),
            box(5, 42, 3, [1, 1, 2, 2]),
            box(6, 3, 3, [1, 1, 2, 2]),
            box(7, 1, 3, "oops"),
        ],
    )
    write_json(root / "annotations/instances_val2017.json", data)
    return root


def test_read_coco_maps_ids_to_labels_and_reports_each_problem(tmp_path):
    root = coco_layout(tmp_path)
    assert detect_format(root) == "coco"
    assert coco_splits(root) == {"val": root / "annotations/instances_val2017.json"}
    report = Report()
    split = read_coco(root, "val", report)
    assert split.classes == ["cat", "dog"]
    assert [r.image.relative_to(root).as_posix() for r in split.records] == [
        "images/val2017/a.png",
        "images/val2017/b.png",
    ]
    a = split.records[0]
    torch.testing.assert_close(a.boxes, torch.tensor([[10.0, 20, 40, 40], [0, 0, 5, 5]]))
    assert a.labels.tolist() == [2, 1]
    assert a.iscrowd.tolist() == [False, True] and a.difficult.tolist() == [False, True]
    assert a.size == (48, 64)
    json_path = root / "annotations/instances_val2017.json"
    assert report.items[UNKNOWN_CLASS] == [f"{json_path}: annotations[2]: category_id 99"]
    assert report.items[BAD_BOX] == [f"{json_path}: annotations[3]: bbox has no area"]
    assert report.items[NO_LABELS] == [str(root / "images/val2017/b.png")]
    assert report.items[MISSING_IMAGE] == [
        f"{json_path}: annotations[4]: image_id 42 is not in 'images'",
        f"{root / 'images/val2017/ghost.png'}: listed in instances_val2017.json",
    ]
    assert report.items[BAD_LABEL_FILE] == [
        f"{json_path}: annotations[6]: 'bbox' is not a list [x, y, width, height]"
    ]


@pytest.mark.parametrize("folder", ["images/val2017", "val2017", "images/val", "val", "images"])
def test_images_are_found_in_any_of_the_usual_folders(tmp_path, folder):
    root = coco_layout(tmp_path, folder)
    (root / "images/train2017").mkdir(parents=True)  # a decoy with none of the images
    split = read_coco(root, "val")
    assert [r.image for r in split.records] == [root / folder / "a.png", root / folder / "b.png"]


def test_the_annotation_file_must_be_there_and_unique(tmp_path):
    root = coco_layout(tmp_path)
    with pytest.raises(DataError, match="instances_train\\*.json: not found"):
        read_coco(root, "train")
    write_json(root / "annotations/instances_val2014.json", coco([], []))
    with pytest.raises(DataError, match="several files for split 'val'"):
        read_coco(root, "val")
    write_json(root / "annotations/instances_val.json", coco([], []))
    assert read_coco(root, "val").records == []  # the exact name wins


def test_write_coco_writes_xywh_contiguous_categories_and_flags(tmp_path):
    img = write_image(tmp_path / "src/a.png", width=64, height=48)
    rec = Record.make(
        img,
        [[10, 20, 40, 40], [0, 0, 5.25, 5]],
        [2, 1],
        difficult=[True, False],
        iscrowd=[False, True],
    )
    root = write_coco(tmp_path / "out", "train", [rec], ["cat", "dog"])
    data = json.loads((root / "annotations/instances_train.json").read_text())
    assert data["images"] == [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    assert data["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert data["annotations"] == [
        box(1, 1, 2, [10, 20, 30, 20], area=600, iscrowd=0, difficult=1),
        box(2, 1, 1, [0, 0, 5.25, 5], area=26.25, iscrowd=1),
    ]
    back = read_coco(root, "train").records[0]
    torch.testing.assert_close(back.boxes, rec.boxes)
    assert back.labels.tolist() == [2, 1]
    assert back.difficult.tolist() == [True, False] and back.iscrowd.tolist() == [False, True]


VALID = json.dumps(
    coco(
        [image(1, "a.png"), image(2, "b.png")],
        [box(1, 1, 7, [10, 20, 30, 20]), box(2, 2, 3, [0, 0, 5, 5])],
    )
).encode()


@settings(max_examples=150, deadline=None)
@given(data=corrupted(VALID))
def test_parse_coco_json_gives_a_file_or_a_data_error_naming_it(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances_train.json"
        path.write_bytes(data)
        try:
            parsed = parse_coco_json(path)
        except DataError as e:
            assert_names_a_file(str(e), path)
            return
        assert all(len(b.box) == 4 for b in parsed.boxes)
        assert all("\n" not in p for p in parsed.problems)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return coco_layout(tmp_path_factory.mktemp("coco"))


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=corrupted(VALID))
def test_read_coco_on_corrupted_files_gives_a_split_or_a_data_error(coco_root, data):
    path = coco_root / "annotations/instances_val2017.json"
    original = path.read_bytes()
    path.write_bytes(data)
    try:
        report = Report()
        split = read_coco(coco_root, "val", report)
    except DataError as e:
        assert_names_a_file(str(e), path)
    else:
        assert_valid_split(split)
        for entries in report.items.values():
            for entry in entries:
                assert_names_a_file(entry, coco_root)
    finally:
        path.write_bytes(original)


@pytest.mark.parametrize(
    "flag, crowd",
    [(0, False), (1, True), ("0", False), ("1", True), ("false", False), ("true", True),
     (False, False), (True, True), (None, False)],
)  # fmt: skip
def test_iscrowd_and_difficult_are_read_as_their_format_means_them(tmp_path, flag, crowd):
    data = coco(
        [image(1, "a.png")],
        [box(1, 1, 7, [1, 2, 3, 4], iscrowd=flag), box(2, 1, 7, [1, 2, 3, 4], difficult=flag)],
    )
    parsed = parse_coco_json(write_json(tmp_path / "instances.json", data))
    assert [b.iscrowd for b in parsed.boxes] == [crowd, False]
    assert [b.difficult for b in parsed.boxes] == [False, crowd]


def test_a_flag_that_is_no_flag_skips_its_entry_only(tmp_path):
    data = coco(
        [image(1, "a.png")],
        [box(1, 1, 7, [1, 2, 3, 4], iscrowd="maybe"), box(2, 1, 7, [1, 2, 3, 4])],
    )
    parsed = parse_coco_json(write_json(tmp_path / "instances.json", data))
    assert [b.index for b in parsed.boxes] == [1]
    assert parsed.problems == [
        "annotations[0]: 'iscrowd' or 'difficult': 'maybe' is not a 0/1 flag"
    ]


def test_one_absurd_number_skips_its_entry_not_the_file(tmp_path):
    # Python refuses to parse integers of over 4300 digits; NaN is not JSON but json reads it
    text = json.dumps(coco([image(1, "a.png")], [box(1, 1, 7, [1, 2, 3, 4])]))
    huge = '{"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 2, %s, 4]}' % ("9" * 5000)
    nan = '{"id": 3, "image_id": 1, "category_id": 7, "bbox": [NaN, 2, 3, 4]}'
    text = text.replace('"annotations": [', f'"annotations": [{huge}, {nan}, ')
    path = tmp_path / "instances.json"
    path.write_text(text)
    parsed = parse_coco_json(path)
    assert [b.index for b in parsed.boxes] == [2]
    assert len(parsed.problems) == 2 and "not a finite number" in parsed.problems[0]


def test_boxes_annotated_on_the_stored_pixels_of_an_exif_turned_image_turn_with_it(tmp_path):
    import numpy as np
    from PIL import Image

    from tinyssd.data.base import EXIF_FRAME, read_image

    arr = np.zeros((30, 40), dtype=np.uint8)  # stored 40 wide x 30 high
    arr[6:14, 4:20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: 30 wide x 40 high
    (tmp_path / "images").mkdir()
    Image.fromarray(arr).save(tmp_path / "images/a.png", exif=exif)
    data = coco([image(1, "a.png", w=40, h=30)], [box(1, 1, 7, [4, 6, 16, 8])])
    write_json(tmp_path / "annotations/instances_train.json", data)
    report = Report()
    rec = read_coco(tmp_path, "train", report).records[0]
    shown = read_image(rec.image)[0] > 127
    ys, xs = torch.nonzero(shown, as_tuple=True)
    white = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    assert rec.boxes.tolist() == [white] and rec.size == (40, 30)
    assert report.count(EXIF_FRAME) == 1


@pytest.mark.parametrize(
    "names, says",
    [
        (["dog", "dog"], r"categories\[1\]: class name 'dog' is also categories\[0\]'s"),
        (["dog", ""], r"categories\[1\]: empty class name"),
        (["dog", "  "], r"categories\[1\]: empty class name"),
    ],
)
def test_categories_named_alike_or_not_at_all_are_a_one_line_error(tmp_path, names, says):
    categories = [{"id": i, "name": n} for i, n in enumerate(names, start=1)]
    path = write_json(tmp_path / "annotations/instances_train.json", coco([], [], categories))
    with pytest.raises(DataError, match=says) as e:
        read_coco(tmp_path, "train")
    assert_names_a_file(str(e.value), path)


def test_category_names_with_a_newline_or_a_comma_are_read_as_written_and_reported(tmp_path):
    from tinyssd.data.base import CLASS_NAME

    write_image(tmp_path / "images/a.png")
    categories = [{"id": 1, "name": "hot\ndog"}, {"id": 2, "name": "a,b"}, {"id": 3, "name": "c"}]
    data = coco([image(1, "a.png")], [box(1, 1, 2, [1, 1, 5, 5])], categories)
    path = write_json(tmp_path / "annotations/instances_train.json", data)
    report = Report()
    split = read_coco(tmp_path, "train", report)
    assert split.classes == ["hot\ndog", "a,b", "c"]
    assert split.records[0].labels.tolist() == [2]
    assert report.items[CLASS_NAME] == [
        f"{path}: category 1 'hot\\ndog': holds a control character such as a newline "
        "(classes.txt and tables cannot)",
        f"{path}: category 2 'a,b': holds a comma (--classes-map cannot name it)",
    ]


def test_a_file_listed_twice_is_read_once_with_the_first_entrys_boxes(tmp_path):
    from tinyssd.data.base import DUPLICATE_IMAGE

    write_image(tmp_path / "images/a.png")
    images = [image(1, "a.png"), image(2, "./a.png"), image(3, "a.png")]
    boxes = [box(1, 1, 7, [1, 1, 5, 5]), box(2, 2, 3, [2, 2, 5, 5]), box(3, 2, 3, [3, 3, 5, 5])]
    path = write_json(tmp_path / "annotations/instances_train.json", coco(images, boxes))
    report = Report()
    split = read_coco(tmp_path, "train", report)
    assert len(split.records) == 1 and split.records[0].labels.tolist() == [2]  # dog, id 7
    assert report.items[DUPLICATE_IMAGE] == [
        f"{path}: image id 2: file_name './a.png' is listed already as image id 1; "
        "skipped with its 2 box(es)",
        f"{path}: image id 3: file_name 'a.png' is listed already as image id 1; "
        "skipped with its 0 box(es)",
    ]
