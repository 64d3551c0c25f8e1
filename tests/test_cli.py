"""The command line: bad usage is one line and exit code 2, before any data is read."""

import subprocess
import sys

import pytest
from fixtures import save_untrained_checkpoint
from PIL import Image

from tinyssd.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size 0: must be > 0"),
        (["--image-size", "0"], "--image-size 0: must be > 0"),
        (["--lr", "-1"], "--lr -1.0: must be > 0"),
        (["--model", "yolo9000"], "--model 'yolo9000': choose from"),
        (["--loss", "box=cubic"], "--loss 'box=cubic'"),
        (["--augment", "teleport"], "--augment 'teleport'"),
        (["--lr", "inf"], "--lr inf: must be a finite number"),
        (["--image-size", "8"], "--image-size 8: tiny_fpn needs at least 32 "),
        (
            ["--image-size", "32", "--recipe", "chapter"],
            "--image-size 32: tiny_ssd needs at least 64",
        ),
        (["--max-pixels", "0"], "--max-pixels 0: must be > 0"),
    ],
)
def test_bad_train_arguments_fail_in_one_line_before_reading_data(args, message, capsys):
    # the data folder does not exist: the argument error must come first
    assert main(["train", "--data", "/nonexistent/data", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyssd: error: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err


def test_a_missing_checkpoint_is_one_line(capsys, tmp_path):
    assert main(["predict", str(tmp_path), "--weights", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"tinyssd: error: {tmp_path / 'none'}: no such run folder or checkpoint file"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("tinyssd ")


def test_an_unwritable_output_path_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["a"], image_size=64)
    Image.new("RGB", (32, 32)).save(tmp_path / "im.png")
    out = tmp_path / "file" / "pictures"
    assert main(["predict", str(tmp_path / "im.png"), "--weights", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinyssd: error: ") and str(tmp_path / "file") in err
    assert "\n" not in err


def test_predict_into_a_closed_pipe_ends_quietly(tmp_path):
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["a"], image_size=64)
    for i in range(40):
        Image.new("RGB", (32, 32), (i, 2 * i, 3 * i)).save(tmp_path / f"{i}.png")
    cmd = [sys.executable, "-m", "tinyssd", "predict", str(tmp_path), "--weights", str(ckpt)]
    cmd += ["--out", str(tmp_path / "out"), "--threshold", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"{")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 0


def test_max_pixels_skips_larger_images_in_every_reader(tmp_path, capsys, monkeypatch):
    from fixtures import write_tiny_bananas

    monkeypatch.setenv("TINYSSD_MAX_PIXELS", "64000000")  # restored after the test
    data = write_tiny_bananas(tmp_path / "data", n_train=3, n_val=1, size=64)
    assert main(["data", "check", str(data), "--max-pixels", str(64 * 64 - 1)]) == 0
    out = capsys.readouterr().out
    assert "train: 0 usable images" in out, out
    assert main(["data", "check", str(data), "--max-pixels", str(64 * 64)]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_a_zero_limit_is_a_one_line_usage_error(capsys):
    assert main(["data", "check", "x", "--max-pixels", "0"]) == 2
    assert capsys.readouterr().err == "tinyssd: error: --max-pixels 0: must be > 0\n"


def test_data_check_with_a_model_reports_the_anchor_fit(tmp_path, capsys):
    from fixtures import write_tiny_bananas

    data = write_tiny_bananas(tmp_path / "data", n_train=12, n_val=2, size=64)
    assert main(["data", "check", str(data), "--model", "tiny_fpn", "--image-size", "64"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("anchors of tiny_fpn at 64 px: ") and "(--anchors auto): " in line
    before, after = (float(x.split("%")[0].split()[-1]) for x in line.split(";"))
    assert after <= before


@pytest.fixture
def model_512(tmp_path, monkeypatch):
    """A checkpoint claiming a 512x512 input (262144 pixels), with no budget in the env."""
    monkeypatch.delenv("TINYSSD_MAX_PIXELS", raising=False)
    return save_untrained_checkpoint(tmp_path / "w512.safetensors", ["a"], image_size=512)


def _command(name, ckpt, tmp_path):
    """The argv of ``tinyssd predict`` / ``eval`` / ``export`` on ``ckpt``, data in tmp_path."""
    from fixtures import write_image, write_tiny_bananas

    if name == "predict":
        image = write_image(tmp_path / "photo.png")
        return ["predict", str(image), "--weights", str(ckpt), "--out", str(tmp_path / "out")]
    if name == "eval":
        data = write_tiny_bananas(tmp_path / "data", n_train=1, n_val=1, size=64)
        return ["eval", "--weights", str(ckpt), "--data", str(data), "--out", str(tmp_path / "e")]
    return ["export", "--weights", str(ckpt), "--out", str(tmp_path / "m.onnx")]


def _budget_error(model_512) -> str:
    return (
        f"tinyssd: error: {model_512}: image_size 512: 512x512 input is over the pixel budget "
        "of 100000 (--max-pixels)"
    )


@pytest.mark.parametrize("name", ["predict", "eval", "export"])
def test_max_pixels_bounds_the_input_size_a_model_claims(name, model_512, tmp_path, capsys):
    assert main([*_command(name, model_512, tmp_path), "--max-pixels", "100000"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == _budget_error(model_512), captured.err
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("name", ["predict", "eval", "export"])
def test_the_pixel_budget_from_the_environment_reaches_model_loading(
    name, model_512, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TINYSSD_MAX_PIXELS", "100000")
    assert main(_command(name, model_512, tmp_path)) == 2
    assert capsys.readouterr().err.strip() == _budget_error(model_512)


def test_a_model_within_the_default_pixel_budget_still_predicts(model_512, tmp_path, capsys):
    assert main(_command("predict", model_512, tmp_path)) == 0
    assert capsys.readouterr().out.startswith("{")
    assert main([*_command("predict", model_512, tmp_path), "--max-pixels", str(512 * 512)]) == 0
