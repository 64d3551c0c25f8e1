"""PR-curve PNG and text table of an evaluation result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tinyssd.evaluation import evaluate
from tinyssd.evaluation.plot import format_class_table, format_table, plot_pr_curves

CLASSES = ["banana", "cherry", "durian"]


@pytest.fixture(scope="module")
def result() -> dict:
    """Two images: banana found once of twice, cherry found, durian absent, label 4 unnamed."""
    targets = [
        {"boxes": np.array([[0.0, 0, 40, 40], [50, 50, 90, 90]]), "labels": np.array([1, 2])},
        {"boxes": np.array([[10.0, 10, 30, 30], [0, 0, 5, 5]]), "labels": np.array([1, 4])},
    ]
    predictions = [
        {
            "boxes": np.array([[1.0, 1, 40, 41], [50, 50, 90, 90], [60, 0, 80, 20]]),
            "scores": np.array([0.9, 0.8, 0.7]),
            "labels": np.array([1, 2, 1]),
        },
        {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)},
    ]
    return evaluate(predictions, targets)


def test_pr_curve_png_is_written(result: dict, tmp_path: Path) -> None:
    path = plot_pr_curves(result, CLASSES, tmp_path / "curves" / "pr.png")
    assert path == tmp_path / "curves" / "pr.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_table_has_every_class_its_counts_and_the_coco_numbers(result: dict) -> None:
    table = format_table(result, CLASSES)
    lines = table.splitlines()
    banana = next(line for line in lines if line.startswith("banana"))
    # 2 boxes, 2 detections; AP50 of the curve TP, FP with 2 boxes: precision 1
    # up to recall 1/2 (51 of 101 points) -> 0.505.
    assert banana.split()[:4] == ["banana", "2", "2", f"{result['per_class'][1]['AP50']:.3f}"]
    assert result["per_class"][1]["AP50"] == pytest.approx(51 / 101)
    assert next(line for line in lines if line.startswith("cherry")).split()[1:4] == [
        "1",
        "1",
        "1.000",
    ]
    durian = next(line for line in lines if line.startswith("durian")).split()
    assert durian[1:] == ["0", "0", "-", "-", "-"]
    assert any(line.startswith("class 4") for line in lines)
    overall = next(line for line in lines if line.startswith("all")).split()
    assert overall[1:3] == ["4", "3"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        value = result[key]
        assert f"{key} {value:.3f}" in table or (value == -1 and f"{key} -" in table)


def test_the_class_table_shows_p_and_r_at_the_threshold_and_dashes_for_no_boxes() -> None:
    from tinyssd.evaluation.plot import format_class_table

    rows = [
        {"class": "banana", "images": 2, "instances": 3, "precision": 0.5, "recall": 2 / 3,
         "AP50": 0.61, "AP": 0.3},
        {"class": "durian", "images": 0, "instances": 0, "precision": -1.0, "recall": -1.0,
         "AP50": -1.0, "AP": -1.0},
        {"class": "all", "images": 2, "instances": 3, "precision": 0.5, "recall": 2 / 3,
         "AP50": 0.61, "AP": 0.3},
    ]  # fmt: skip
    lines = format_class_table(rows, 0.4321).splitlines()
    assert lines[0].split() == ["class", "images", "instances", "P", "R", "AP50", "AP"]
    assert lines[2].split() == ["banana", "2", "3", "0.500", "0.667", "0.610", "0.300"]
    assert lines[3].split() == ["durian", "0", "0", "-", "-", "-", "-"]
    assert lines[4].strip("-") == "" and lines[5].split()[0] == "all"
    assert lines[-1].startswith("P and R at score >= 0.432 ")


def test_confusion_matrix_and_threshold_curve_pngs(result: dict, tmp_path: Path) -> None:
    from tinyssd.evaluation.plot import plot_confusion_matrix, plot_threshold_curves

    matrix = np.array([[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    path = plot_confusion_matrix(matrix, CLASSES, tmp_path / "confusion_matrix.png", 0.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = plot_threshold_curves(result["threshold_curves"], {}, CLASSES, tmp_path, 0.5)
    assert [p.name for p in written] == ["P_curve.png", "R_curve.png", "F1_curve.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


HOSTILE = ["\x1b[31mred\x1b[0m", "\x1b]0;title\x07b"]  # an SGR colour, an OSC window title


def test_tables_escape_terminal_codes_in_class_names():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    prediction = {"boxes": boxes, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    result = evaluate([prediction], [{"boxes": boxes, "labels": torch.tensor([1])}])
    row = {"images": 1, "instances": 1, "precision": 1.0, "recall": 1.0, "AP50": 1.0, "AP": 1.0}
    rows = [{"class": name, **row} for name in HOSTILE] + [{"class": "all", **row}]
    for table in (format_table(result, HOSTILE), format_class_table(rows, 0.5)):
        assert "\x1b" not in table and "\x07" not in table
        assert "\\x1b[31mred\\x1b[0m " in table and "\\x1b]0;title\\x07b " in table
