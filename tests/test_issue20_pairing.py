"""A model scored on data of other classes is an error unless the user says how to pair them."""

from __future__ import annotations

import json

import pytest
from fixtures import save_untrained_checkpoint, write_tiny_bananas

from tinyssd.cli import main

BCCD = ["Platelets", "RBC", "WBC"]


@pytest.fixture(scope="module")
def bananas(tmp_path_factory):
    return write_tiny_bananas(tmp_path_factory.mktemp("bananas"), n_train=2, n_val=3, size=64)


@pytest.fixture(scope="module")
def bccd_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "bccd.safetensors"
    return save_untrained_checkpoint(path, BCCD, image_size=64)


def _eval(model, data, tmp_path, *extra):
    out = tmp_path / "report"
    args = ["eval", "--weights", str(model), "--data", str(data), "--out", str(out)]
    return main([*args, "--json", str(tmp_path / "m.json"), *extra]), out


def test_eval_of_other_classes_is_a_one_line_error_naming_both(
    bananas, bccd_model, tmp_path, capsys
):
    rc, out = _eval(bccd_model, bananas, tmp_path)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "['banana']" in err and str(BCCD) in err and "--classes-map" in err
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_classes_map_pairs_the_data_with_the_model(bananas, bccd_model, tmp_path):
    rc, out = _eval(bccd_model, bananas, tmp_path, "--classes-map", "banana=RBC")
    assert rc == 0
    instances = {
        c["class"]: c["instances"]
        for c in json.loads((out / "results.json").read_text())["classes"]
    }
    # the 3 bananas are scored as RBC (the model's second class), not as Platelets
    assert instances == {"Platelets": 0, "RBC": 3, "WBC": 0, "all": 3}
    assert (tmp_path / "m.json").is_file()


def test_force_scores_by_position_with_a_warning(bananas, bccd_model, tmp_path, caplog):
    rc, _ = _eval(bccd_model, bananas, tmp_path, "--force")
    assert rc == 0
    assert any("--force" in r.getMessage() and "position" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("mapping", "words"),
    [
        ("banana", "not OLD=NEW"),
        ("apple=RBC", "'apple' is not a class of the data"),
        ("banana=Banana", "'Banana' is not a class of the model"),
    ],
)
def test_a_bad_classes_map_names_the_option(bananas, bccd_model, tmp_path, capsys, mapping, words):
    rc, _ = _eval(bccd_model, bananas, tmp_path, "--classes-map", mapping)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "--classes-map" in err and words in err


def test_data_of_a_subset_of_the_model_classes_is_matched_by_name(tmp_path, bananas):
    model = save_untrained_checkpoint(tmp_path / "m.safetensors", ["apple", "banana"], 64)
    rc, out = _eval(model, bananas, tmp_path)
    assert rc == 0 and (out / "results.json").is_file()
