"""The run config: TrainConfig is the one source of `tinyssd train`'s options."""

from dataclasses import fields

import pytest

from tinyssd.cli import build_parser, main, train_overrides
from tinyssd.config import RECIPES, TrainConfig, flag, read_config_file, read_run_config
from tinyssd.errors import UsageError
from tinyssd.models.config import PRESETS


def _train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_config_field_is_a_train_option_with_its_default_in_the_help():
    options = {o: a for a in _train_parser()._actions for o in a.option_strings}
    for f in fields(TrainConfig):
        action = options.get(f"--{flag(f.name)}")
        assert action is not None, f"TrainConfig.{f.name} has no --{flag(f.name)} option"
        shown = RECIPES["default"].get(f.name, f.default)
        if shown is not None:
            assert f"default: {shown}" in action.help, (f.name, action.help)


def test_no_option_given_means_the_config_defaults():
    a = build_parser().parse_args(["train"])
    assert train_overrides(a) == {}
    assert TrainConfig(**train_overrides(a)) == TrainConfig()


def test_options_given_reach_the_config_typed():
    a = build_parser().parse_args(
        ["train", "--epochs", "3", "--lr", "0.01", "--no-progress", "--image-size", "300"]
    )
    cfg = TrainConfig(**train_overrides(a))
    assert (cfg.epochs, cfg.lr, cfg.progress, cfg.image_size) == (3, 0.01, False, 300)


def test_chapter_recipe_resolves_to_the_chapters_exact_settings():
    cfg = TrainConfig(recipe="chapter").resolved()
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.optimizer) == ("tiny_ssd", 20, 32, "sgd")
    assert (cfg.lr, cfg.momentum, cfg.weight_decay) == (0.2, 0.0, 5e-4)
    assert (cfg.loss, cfg.augment) == ("chapter", "none")


def test_explicit_values_override_the_recipe():
    cfg = TrainConfig(recipe="chapter", lr=0.05, epochs=3).resolved()
    assert (cfg.lr, cfg.epochs, cfg.momentum) == (0.05, 3, 0.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_size": 0}, "--batch-size 0: must be > 0"),
        ({"image_size": 0}, "--image-size 0: must be > 0"),
        ({"lr": -1.0}, "--lr -1.0: must be > 0"),
        ({"epochs": 0}, "--epochs 0: must be > 0"),
        ({"device": "tpu"}, "--device 'tpu': choose from"),
        ({"recipe": "magic"}, "--recipe 'magic': choose from"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_option(kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        TrainConfig(**kw).resolved()


def test_config_json_is_read_back(tmp_path):
    (tmp_path / "config.json").write_text('{"train": {"epochs": 7, "lr": 0.3, "out": "x"}}')
    assert read_run_config(tmp_path)["epochs"] == 7
    a = build_parser().parse_args(["train", "--config", str(tmp_path), "--lr", "0.1"])
    cfg = TrainConfig(**train_overrides(a))
    assert (cfg.epochs, cfg.lr, cfg.out) == (7, 0.1, None)  # a repeat goes to a new folder


def test_a_broken_config_json_is_one_usage_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError, match="config.json: not a tinyssd config.json"):
        read_run_config(tmp_path / "config.json")


def test_the_default_recipe_is_the_modern_one():
    cfg = TrainConfig().resolved()
    assert (cfg.model, cfg.optimizer, cfg.schedule, cfg.anchors) == (
        "tiny_fpn",
        "adamw",
        "cosine",
        "auto",
    )
    assert cfg.loss == "qfl_giou" and cfg.norm_bias_decay is False and cfg.max_steps > 0


def test_min_steps_floor_applies_unless_epochs_are_given():
    assert TrainConfig().resolved().min_steps == RECIPES["default"]["min_steps"] > 0
    assert TrainConfig(epochs=5).resolved().min_steps == 0
    assert TrainConfig(epochs=5, min_steps=50).resolved().min_steps == 50


def test_the_readme_recipe_table_states_the_recipes_budget_and_ema():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| `--")
    }
    d, c = RECIPES["default"], RECIPES["chapter"]
    budget = rows["`--batch-size`, `--epochs`, `--min-steps`, `--max-steps`"]
    assert f"| {d['batch_size']}, {d['epochs']}, at least {d['min_steps']} and at most " in budget
    assert f"{d['max_steps']} steps | {c['batch_size']}, {c['epochs']}, 0, 0 |" in budget
    ema = rows["`--ema`"].split("|")[2].strip()
    assert ema.startswith(f"{d['ema']:g} (off" if d["ema"] == 0 else f"{d['ema']:g} (")
    default_cell, chapter_cell = rows["`--assigner`"].split("|")[2:4]
    assert default_cell.strip().startswith(f"`{d['assigner']}`")
    assert chapter_cell.strip().startswith(f"`{c['assigner']}`")
    patience = rows["`--patience`"].split("|")[2:4]
    assert [cell.strip().split()[0] for cell in patience] == [
        str(d["patience"]),
        str(c["patience"]),
    ]


def test_the_resolved_config_is_frozen_with_every_recipe_field_set():
    from dataclasses import FrozenInstanceError

    from tinyssd.config import RunConfig

    assert [f.name for f in fields(RunConfig)] == [f.name for f in fields(TrainConfig)]
    for recipe in RECIPES:
        cfg = TrainConfig(recipe=recipe, out="runs/x").resolved()
        assert isinstance(cfg, RunConfig)
        asked = {k: v for k, v in RECIPES[recipe].items() if k != "tile"}
        assert {k: getattr(cfg, k) for k in asked} == asked
        assert cfg.tile == 0  # "auto" and 0 alike: the synthetic set's images are small
        with pytest.raises(FrozenInstanceError):
            cfg.lr = 1.0  # type: ignore[misc]


def test_a_run_without_out_resolves_to_the_first_free_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "train").mkdir(parents=True)
    assert TrainConfig().resolved().out == "runs/train2"
    assert TrainConfig(out=tmp_path / "mine").resolved().out == str(tmp_path / "mine")


def test_nan_and_infinity_are_refused_by_the_python_api_too():
    with pytest.raises(UsageError, match=r"^--weight-decay nan: must be a finite number$"):
        TrainConfig(weight_decay=float("nan")).resolved()
    with pytest.raises(UsageError, match=r"^--lr inf: must be a finite number$"):
        TrainConfig(lr=float("inf")).resolved()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"image_size": 8}, "--image-size 8: tiny_fpn needs at least 32 "),
        ({"image_size": 16, "model": "ssd_resnet18"}, "--image-size 16: ssd_resnet18 needs at "),
        ({"image_size": 256, "model": "ssd300_vgg16"}, "--image-size 256: ssd300_vgg16 needs at"),
    ],
)
def test_an_image_size_below_what_the_models_strides_need_is_refused(kw, message):
    with pytest.raises(UsageError, match=f"^{message}"):
        TrainConfig(**kw).resolved()
    assert TrainConfig(image_size=32).resolved().image_size == 32  # tiny_fpn's least


def _feature_sides(model, size: int) -> list[int] | None:
    """The side of each feature map at a square input of ``size`` px; None if it cannot run."""
    import torch

    try:
        with torch.no_grad():
            return [f.shape[-1] for f in model.backbone(torch.zeros(1, 3, size, size))]
    except RuntimeError:  # a layer's output would be empty
        return None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_models_least_image_size_is_measured(name):
    import torch

    from tinyssd.models import SSD
    from tinyssd.models.config import MIN_IMAGE_SIZES

    torch.manual_seed(0)
    least = MIN_IMAGE_SIZES[name]
    model = SSD(1, PRESETS[name]()).eval()
    sides = _feature_sides(model, least)
    assert sides is not None and sides[0] >= 4, sides  # the finest map: at least 4 cells a side
    assert PRESETS[name]().image_size >= least
    # one pixel less: a layer gets no pixels, or the finest map falls below 4 of its strides
    below = _feature_sides(model, least - 1)
    assert below is None or least == 4 * round(least / sides[0]), (below, sides)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ('{"epoch": 3}', "unknown key 'epoch' (did you mean 'epochs'?)"),
        ('{"learning_rate": 0.1}', "unknown key 'learning_rate' (did you mean 'lr'?)"),
        ('{"colour": "red"}', "unknown key 'colour' (not an option of tinyssd train)"),
        ('{"epochs": "three"}', "key 'epochs': 'three' is not an integer or null"),
        ('{"lr": "0.1"}', "key 'lr': '0.1' is not a number or null"),
        ('{"augment": 3}', "key 'augment': 3 is not a string or null"),
        ('{"progress": 1}', "key 'progress': 1 is not true or false"),
        ('{"tile": [256]}', "key 'tile': [256] is not a string, an integer or null"),
        ("[" * 100_000 + "]" * 100_000, "not a tinyssd config.json (nested too deeply)"),
    ],
)
def test_a_config_files_bad_key_or_value_is_one_line_naming_file_and_key(
    train, message, tmp_path, capsys
):
    from tinyssd.cli import main

    config = tmp_path / "cfg.json"
    config.write_text(f'{{"train": {train}}}')
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err == f"tinyssd: error: {config}: {message}\n"


def test_a_resumed_runs_config_keeps_ignoring_keys_of_other_versions(tmp_path):
    (tmp_path / "config.json").write_text('{"train": {"epochs": 2, "retired_option": 1}}')
    assert TrainConfig.from_dict(read_run_config(tmp_path)).epochs == 2
    with pytest.raises(UsageError, match=r"config.json: key 'epochs': 2.5 is not an integer"):
        TrainConfig.from_dict({"epochs": 2.5}, source=tmp_path / "config.json")


def test_image_size_is_a_number_or_auto_in_any_case_and_resolves_to_an_int():
    assert TrainConfig(image_size=" 320 ").image_size == 320  # the command line's text
    assert TrainConfig(image_size="Auto").image_size == "auto"
    cfg = TrainConfig(image_size="auto", out="x").resolved()  # the synthetic set: the model's
    assert cfg.image_size == PRESETS["tiny_fpn"]().image_size and type(cfg.image_size) is int
    with pytest.raises(UsageError, match=r"^--image-size 'big': a size in pixels, or auto$"):
        TrainConfig(image_size="big", out="x").resolved()


def test_a_config_file_may_ask_for_image_size_auto_and_no_other_word(tmp_path, capsys):
    from tinyssd.cli import main

    config = tmp_path / "cfg.json"
    config.write_text('{"train": {"image_size": "auto", "model": "tiny_ssd"}}')
    asked = read_config_file(config)
    assert asked.image_size == "auto" and asked.resolved().image_size == 256
    config.write_text('{"train": {"image_size": "big"}}')
    assert main(["train", "--config", str(config), "--data", str(tmp_path / "none")]) == 2
    assert (
        capsys.readouterr().err == "tinyssd: error: --image-size 'big': a size in pixels, or auto\n"
    )


def test_resume_of_a_missing_path_names_it_as_typed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["train", "--resume", "runs/nonexist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs/nonexist" in err and "config.json" not in err and len(err.splitlines()) == 1
