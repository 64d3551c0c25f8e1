"""Every command's options come from a dataclass: help for each, README's defaults, no torch."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyssd.cli import build_parser, from_namespace
from tinyssd.options import PostprocessConfig, PredictOptions, ServeOptions, flag

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> dict:
    """Every (sub)command's parser by its words: ("data", "check") -> its parser."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[(*words, name)] = sub
                out.update(_commands(sub, (*words, name)))
    return out


COMMANDS = _commands(build_parser())


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def test_every_option_and_argument_of_every_command_has_help():
    for words, parser in COMMANDS.items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"tinyssd {' '.join(words)} {name}"


def _readme_defaults() -> list[tuple[tuple[str, ...], str, str]]:
    """(command words, --option, value) of each ``[--option value]`` that README's
    "Command line" section writes with a literal value (not N, DIR, a|b, ...)."""
    text = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    lines = " ".join(text.replace("\\\n", " ").splitlines()).split("tinyssd ")[1:]
    found = []
    for line in lines:
        tokens = line.split("#")[0].split("```")[0].split()
        words: tuple[str, ...] = ()
        while tokens and (*words, tokens[0]) in COMMANDS:
            words, tokens = (*words, tokens[0]), tokens[1:]
        depth = 0
        for i, token in enumerate(tokens):
            depth += token.count("[")
            option = token.lstrip("[")
            if depth and option.startswith("--") and i + 1 < len(tokens):
                value = tokens[i + 1].rstrip("]")
                literal = not re.search(r"[A-Z|\[\]]", value) and not value.startswith("-")
                if literal and words:
                    found.append((words, option.rstrip("]"), value))
            depth -= token.count("]")
    return found


def _same(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def test_readme_defaults_are_those_of_help():
    found = _readme_defaults()
    assert len(found) >= 15, found  # the section was parsed
    for words, option, value in found:
        command = f"tinyssd {' '.join(words)} {option}"
        action = _options(COMMANDS[words]).get(option)
        assert action is not None, f"README: {command}: no such option"
        shown = re.search(r"\(default: ([^\s,)]+)", action.help or "")
        assert shown, f"{command}: --help shows no default"
        assert _same(shown.group(1), value), f"{command}: README {value}, --help {shown.group(1)}"


def test_the_limits_help_states_the_readers_defaults():
    from tinyssd.data.limits import DataLimits

    help_text = {o: a.help for o, a in _options(COMMANDS[("data", "check")]).items()}
    assert f"(default: {DataLimits().max_pixels}," in help_text["--max-pixels"]
    assert f"(default: {DataLimits().max_boxes}," in help_text["--max-boxes"]


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_postprocessing_options_are_postprocess_configs_fields(command):
    args = {"predict": ["x.png", "--weights", "w"], "serve": ["--weights", "w"]}[command]
    parser = build_parser()
    a = parser.parse_args([command, *args, "--threshold", "0.3", "--nms-threshold", "0.6"])
    cls = {"predict": PredictOptions, "serve": ServeOptions}[command]
    assert from_namespace(cls, a).post == PostprocessConfig(score_threshold=0.3, nms_threshold=0.6)
    assert from_namespace(cls, parser.parse_args([command, *args])).post == PostprocessConfig()


def test_the_device_choices_are_the_same_for_every_command():
    devices = {
        words: _options(parser)["--device"].choices
        for words, parser in COMMANDS.items()
        if "--device" in _options(parser)
    }
    assert len(devices) == 3 and len(set(devices.values())) == 1, devices


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_help_of_every_command_imports_no_torch():
    commands = [list(words) for words in COMMANDS]
    _run(
        "import sys\n"
        "import tinyssd\n"
        "assert 'torch' not in sys.modules, 'import tinyssd'\n"
        "from tinyssd.cli import build_parser, main\n"
        "build_parser()\n"
        f"for words in [[], *{commands!r}]:\n"
        "    try:\n"
        "        main([*words, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "    assert 'torch' not in sys.modules, words\n"
    )


def test_the_box_maths_imports_neither_torchvision_models_nor_matplotlib():
    _run(
        "import sys, tinyssd.boxes\n"
        "loaded = [m for m in ('torchvision.models', 'matplotlib') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )


def _readme_table(heading: str, first_cell: str) -> list[list[str]]:
    """The cells of the README table under ``heading`` whose header row starts with
    ``first_cell`` (header and rule rows left out)."""
    lines = README.read_text().split(heading, 1)[1].splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("|") and line.split("|")[1].strip() == first_cell
    )
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("| "):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return table


def _tokens(cell: str) -> list[str]:
    return re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?|[A-Za-z_][\w]*", cell)


def _says(token: str, value) -> bool:
    if isinstance(value, bool):
        return token.lower() == ("yes" if value else "no")
    if isinstance(value, (int, float)):
        try:
            return float(token) == value
        except ValueError:
            return False
    return token.lower() == str(value).lower()


def test_the_readme_recipe_table_states_every_recipe_value():
    from tinyssd.config import RECIPES

    covered = set()
    for option_cell, *cells in _readme_table("**Recipes.**", "option"):
        names = [o.strip("`").removeprefix("--").replace("-", "_") for o in option_cell.split(", ")]
        for recipe, cell in zip(("default", "chapter"), cells, strict=True):
            tokens = _tokens(cell)
            for name in names:  # each value in the cell, in the options' order
                value = RECIPES[recipe][name]
                at = next((i for i, t in enumerate(tokens) if _says(t, value)), None)
                assert at is not None, f"README recipe table: --{flag(name)} {recipe}: {value}"
                tokens = tokens[at + 1 :]
        covered.update(names)
    assert covered == set(RECIPES["default"]), set(RECIPES["default"]) - covered


def test_the_readme_losses_table_marks_the_default_recipes_loss():
    from tinyssd.config import RECIPES

    table = _readme_table("## Losses", "option")
    defaults = [row[0] for row in table if "(default" in row[0]]
    assert defaults == [f"`{RECIPES['default']['loss']}` (default)"], defaults
    chapter = [row[0] for row in table if "--recipe chapter" in row[0]]
    assert chapter == [f"`{RECIPES['chapter']['loss']}` (`--recipe chapter`)"], chapter


def test_model_help_lists_every_model():
    from tinyssd.models import PRESETS
    from tinyssd.options import MODEL_NAMES

    assert MODEL_NAMES == tuple(PRESETS)
    help_text = " ".join(_options(COMMANDS[("train",)])["--model"].help.split())
    for name in PRESETS:
        assert name in help_text, name


def _required_args(parser: argparse.ArgumentParser) -> list[str]:
    """A placeholder for each argument and required option of a (sub)command, and a
    ``--data`` that does not exist (train without it would train on the synthetic set)."""
    args = []
    for action in parser._actions:
        value = action.choices[0] if action.choices else "x"
        if not action.option_strings and action.dest not in ("help", "command", "data_command"):
            args.append(value)
        elif action.option_strings and (action.required or action.dest == "data"):
            args += [action.option_strings[0], value]
    return args


def _options_where(test) -> list:
    """(command words, --option) of every option of every command that ``test`` picks."""
    return [
        pytest.param(words, option, id=f"{' '.join(words)} {option}")
        for words, parser in COMMANDS.items()
        for option, action in _options(parser).items()
        if test(option, action)
    ]


def _positive_flags() -> set[str]:
    """The options declared ``positive`` in any command's settings dataclasses."""
    from dataclasses import fields, is_dataclass

    from tinyssd import options
    from tinyssd.options import field_flag

    found = set()
    for cls in vars(options).values():
        if isinstance(cls, type) and is_dataclass(cls):
            found |= {f"--{field_flag(f)}" for f in fields(cls) if f.metadata.get("positive")}
    return found


FLOAT_OPTIONS = _options_where(lambda option, action: action.type is float)
POSITIVE_OPTIONS = _options_where(lambda option, action: option in _positive_flags())


def test_the_checked_options_are_found_in_every_command():
    floats = {p.id for p in FLOAT_OPTIONS}
    assert {"train --lr", "serve --max-upload-mb", "predict --threshold"} <= floats, floats
    assert len(floats) >= 15, floats
    positive = {p.id for p in POSITIVE_OPTIONS}
    assert {"serve --max-pixels", "serve --max-batch", "data check --max-boxes"} <= positive


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize(("words", "option"), FLOAT_OPTIONS)
def test_every_float_option_refuses_nan_and_infinity_in_one_line(
    words, option, value, capsys, tmp_path, monkeypatch
):
    from tinyssd.cli import main

    monkeypatch.chdir(tmp_path)  # nothing the command might write lands in the checkout
    args = [*words, *_required_args(COMMANDS[words]), f"{option}={value}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tinyssd: error: {option} {value}: must be "), err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize(("words", "option"), POSITIVE_OPTIONS)
def test_positive_options_refuse_zero_in_one_line_for_every_command(words, option, capsys):
    from tinyssd.cli import main

    assert main([*words, *_required_args(COMMANDS[words]), option, "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tinyssd: error: {option} 0: must be > 0"


def test_train_image_size_takes_a_number_or_auto_and_refuses_other_words_in_one_line(capsys):
    from tinyssd.cli import main, train_overrides
    from tinyssd.config import TrainConfig

    for value, asked in (("auto", "auto"), ("300", 300)):
        a = build_parser().parse_args(["train", "--image-size", value])
        assert TrainConfig(**train_overrides(a)).image_size == asked
    assert main(["train", "--image-size", "big", "--data", "none"]) == 2
    err = capsys.readouterr().err
    assert err == "tinyssd: error: --image-size 'big': a size in pixels, or auto\n"


def test_image_size_auto_stores_the_chosen_size_in_config_json(tmp_path):
    import json

    from fixtures import write_image

    from tinyssd.cli import main
    from tinyssd.config import read_config_file
    from tinyssd.data.bananas import write_bananas

    data = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            write_image(data / f"bananas_{split}" / "images" / f"{i}.png", 128, 128, seed=i)
        # 14 x 7 px of 128: 14 px at 256, under the 2 cells of 8 px tiny_ssd's finest map needs
        write_bananas(data, split, [(f"{i}.png", 0, 20, 30, 34, 37) for i in range(n)])
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--image-size", "auto", "--model", "tiny_ssd"]
    args += ["--recipe", "chapter", "--epochs", "1", "--batch-size", "4", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["image_size"] == 320
    assert read_config_file(out).image_size == 320  # --config and --resume repeat the size
