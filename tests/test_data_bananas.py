"""The banana CSV: bad rows and files never escape as other exceptions; writing from records."""

import pytest
import torch
from fixtures import assert_names_a_file, assert_valid_split, corrupted, write_image
from hypothesis import HealthCheck, given, settings

from tinyssd.data import DataError, Record, Report, read_bananas
from tinyssd.data.bananas import bananas_splits, write_bananas_records
from tinyssd.data.base import BAD_LABEL_FILE, MISSING_IMAGE

HEADER = "img_name,label,xmin,ymin,xmax,ymax\n"


def test_rows_with_non_finite_numbers_are_unparsable(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png")
    (tmp_path / "bananas_train/label.csv").write_text(
        HEADER + "0.png,0,nan,1,9,9\n0.png,0,1,1,inf,9\n0.png,0,1,1,9,9\n"
    )
    report = Report()
    split = read_bananas(tmp_path, "train", report)
    torch.testing.assert_close(split.records[0].boxes, torch.tensor([[1.0, 1, 9, 9]]))
    assert [e.split(": ")[0] for e in report.items[BAD_LABEL_FILE]] == [
        f"{tmp_path / 'bananas_train/label.csv'}:{n}" for n in (2, 3)
    ]


def test_labels_that_are_no_ascii_class_index_are_reported_by_line_never_read(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png")
    labels = ["1.0", "-1", "\u0663", "+1", "1_0", "\uff11", " 1 "]  # \u0663: Arabic-Indic 3
    rows = "".join(f"0.png,{label},1,1,9,9\n" for label in labels)
    (tmp_path / "bananas_train/label.csv").write_text(HEADER + rows, encoding="utf-8")
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\n")
    report = Report()
    split = read_bananas(tmp_path, "train", report)
    assert split.records[0].labels.tolist() == [2]  # " 1 " alone: class index 1
    csv = tmp_path / "bananas_train/label.csv"
    assert [e.split(": ")[0] for e in report.items[BAD_LABEL_FILE]] == [
        f"{csv}:{n}" for n in range(2, 8)
    ]
    assert (
        "'\u0663' is not a class index (0, 1, 2, ... in ASCII digits)"
        in (report.items[BAD_LABEL_FILE][2])
    )


def test_a_classes_txt_naming_a_class_twice_is_a_one_line_error(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png")
    (tmp_path / "bananas_train/label.csv").write_text(HEADER + "0.png,1,1,1,9,9\n")
    (tmp_path / "classes.txt").write_text("dog\ndog\n")
    with pytest.raises(
        DataError, match=r"classes.txt: class 2: class name 'dog' is also class 1's"
    ):
        read_bananas(tmp_path, "train")


def test_a_name_with_a_newline_stays_on_one_line_of_the_report(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png")
    (tmp_path / "bananas_train/label.csv").write_text(HEADER + '"a\nb.png",0,1,1,9,9\n')
    report = Report()
    read_bananas(tmp_path, "train", report)
    assert report.items[MISSING_IMAGE] == [f"{tmp_path / 'bananas_train/images'}/a\\nb.png"]


def test_a_binary_classes_file_is_a_data_error_naming_it(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png")
    (tmp_path / "bananas_train/label.csv").write_text(HEADER)
    (tmp_path / "classes.txt").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="classes.txt: not a UTF-8 text file"):
        read_bananas(tmp_path, "train")


def test_write_from_records_keeps_names_classes_and_fractional_boxes(tmp_path):
    a = write_image(tmp_path / "one/0.png", seed=1)
    b = write_image(tmp_path / "two/0.png", seed=2)
    records = [Record.make(a, [[1.25, 2, 9.5, 10]], [2]), Record.make(b, [], [])]
    root = write_bananas_records(tmp_path / "out", "val", records, ["apple", "pear"])
    assert bananas_splits(root) == {"val": root / "bananas_val/label.csv"}
    assert (root / "bananas_val/label.csv").read_text().splitlines() == [
        HEADER.strip(),
        "0.png,1,1.25,2,9.5,10",
    ]
    split = read_bananas(root, "val")
    assert split.classes == ["apple", "pear"]
    assert [r.image.name for r in split.records] == ["0.png", "val_0.png"]
    torch.testing.assert_close(split.records[0].boxes, torch.tensor([[1.25, 2, 9.5, 10]]))
    assert split.records[0].labels.tolist() == [2] and len(split.records[1].labels) == 0


VALID = (HEADER + "0.png,0,1,2,30,40\n1.png,1,5,5,20,20\n").encode()


@pytest.fixture(scope="module")
def bananas_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bananas")
    for i in range(2):
        write_image(root / f"bananas_train/images/{i}.png", seed=i)
    (root / "classes.txt").write_text("apple\npear\n")
    return root


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=corrupted(VALID))
def test_read_bananas_on_corrupted_csv_gives_a_split_or_a_data_error(bananas_root, data):
    (bananas_root / "bananas_train/label.csv").write_bytes(data)
    try:
        report = Report()
        split = read_bananas(bananas_root, "train", report)
    except DataError as e:
        assert_names_a_file(str(e), bananas_root)
    else:
        assert_valid_split(split)
        for entries in report.items.values():
            for entry in entries:
                assert "\n" not in entry


def test_a_csv_with_a_utf8_bom_reads(tmp_path):
    write_image(tmp_path / "bananas_train/images/0.png", 32, 32)
    (tmp_path / "bananas_train/label.csv").write_bytes(
        ("\ufeff" + HEADER + "0.png,0,1,2,10,12\n").encode("utf-8")
    )
    split = read_bananas(tmp_path, "train")
    assert split.records[0].boxes.tolist() == [[1, 2, 10, 12]]
