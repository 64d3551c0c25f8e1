import os
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from export_helpers import rewritten_checkpoint
from fixtures import save_untrained_checkpoint, write_image

import tinyssd
from tinyssd.checkpoint import read_checkpoint, resolve_weights, restore, save_checkpoint
from tinyssd.cli import main
from tinyssd.errors import CheckpointError
from tinyssd.models import TinySSD


def _model_and_optimizer():
    torch.manual_seed(0)
    model = TinySSD(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _, cls_preds, bbox_preds = model(torch.rand(2, 3, 64, 64) * 255)
    (cls_preds.sum() + bbox_preds.sum()).backward()
    opt.step()  # momentum buffers exist now
    return model, opt


def test_checkpoint_restores_model_optimizer_epoch_and_rng(tmp_path):
    model, opt = _model_and_optimizer()
    torch.manual_seed(123)
    path = save_checkpoint(tmp_path / "last.safetensors", model, {"classes": ["a", "b"]}, opt, 7)
    expected_draw = torch.rand(3)

    model2, opt2 = TinySSD(2), None
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    torch.manual_seed(999)
    meta = restore(path, model2, opt2)
    assert meta["epoch"] == 7 and meta["config"]["classes"] == ["a", "b"]
    for (k, v), v2 in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(v, v2, rtol=0, atol=0, msg=k)
    assert opt2.param_groups[0]["lr"] == 0.1
    for p, p2 in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"], opt2.state[p2]["momentum_buffer"], rtol=0, atol=0
        )
    assert torch.equal(torch.rand(3), expected_draw)


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path / "last.safetensors", model, {"v": 1}, opt, 1)
    before = path.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # the process dies between writing the temp file and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, {"v": 2}, opt, 2)
    assert path.read_bytes() == before
    assert read_checkpoint(path)[1]["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]  # temp file removed


def test_killed_mid_write_last_good_checkpoint_still_loads(tmp_path):
    """SIGKILL a process that rewrites a checkpoint in a loop; the file always loads."""
    script = textwrap.dedent(
        f"""
        import torch, sys
        from tinyssd.checkpoint import save_checkpoint
        from tinyssd.models import build_model
        model = build_model("ssd300_vgg16", 20)  # ~100 MB: writes take a while
        epoch = 0
        while True:
            epoch += 1
            save_checkpoint({str(tmp_path / "last.safetensors")!r}, model, {{}}, None, epoch)
            print(epoch, flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"  # one good checkpoint exists
        proc.stdout.readline()
        import time

        time.sleep(0.15)  # somewhere inside a later write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _, meta = read_checkpoint(tmp_path / "last.safetensors")
    assert meta["epoch"] >= 2


def test_unreadable_checkpoint_gives_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="broken.safetensors"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such run folder"):
        resolve_weights(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no best.safetensors"):
        resolve_weights(tmp_path)


# ---------------------------------------------------------------------------- what a file claims


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A good checkpoint (TinySSD, 64 px, classes cat and dog) to make bad ones from."""
    folder = tmp_path_factory.mktemp("source")
    return save_untrained_checkpoint(folder / "best.safetensors", ["cat", "dog"], image_size=64)


def _predict_error(capsys, weights, tmp_path) -> str:
    """``tinyssd predict`` with ``weights``: exit code 2, nothing on stdout, and stderr
    one line, which is returned."""
    image = write_image(tmp_path / "photo.png")
    argv = ["predict", str(image), "--weights", str(weights), "--out", str(tmp_path / "out")]
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and captured.out == "" and len(err.splitlines()) == 1, captured
    assert err.startswith("tinyssd: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "header, message",
    [
        ("{nope", "tinyssd metadata is not JSON (Expecting property name"),
        ("[1, 2]", "tinyssd metadata is an array, not a JSON object"),
        ('{"epoch": "7", "config": {}}', "metadata epoch is a string, not an integer"),
        ('{"epoch": 7, "config": []}', "metadata config is an array, not an object"),
    ],
)
def test_metadata_that_is_not_a_json_object_is_one_line_naming_the_file(
    source, tmp_path, capsys, header, message
):
    bad = rewritten_checkpoint(source, tmp_path / "bad.safetensors", header=header)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(bad)
    assert str(e.value).startswith(f"{bad}: {message}")
    assert f"tinyssd: error: {bad}: {message}" in _predict_error(capsys, bad, tmp_path)


@pytest.mark.parametrize("value, kind", [(float("nan"), "NaN"), (float("-inf"), "inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_file(
    source, tmp_path, capsys, value, kind
):
    bad = rewritten_checkpoint(source, tmp_path / "best.safetensors", poison=value)
    err = _predict_error(capsys, bad, tmp_path)
    assert err.startswith(f"tinyssd: error: {bad}: weights hold {kind} (model.")
    assert err.endswith("the run diverged?); retrain or use an earlier checkpoint")
    with pytest.raises(CheckpointError, match="weights hold"):
        restore(bad, TinySSD(2))  # --resume too


def _set(config: dict, key: str, value: object) -> None:
    """``config[key] = value``, ``key`` a dotted path (``ssd.image_size``)."""
    *parents, last = key.split(".")
    for name in parents:
        config = config[name]
    config[last] = value


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("classes", [], "classes []: the model names no class"),
        ("classes", "cat,dog", "classes 'cat,dog': not a list of class names"),
        ("classes", ["cat", 2], "classes ['cat', 2]: not a list of class names"),
        ("num_classes", 3, "num_classes 3 but 2 class names"),
        ("ssd.image_size", 0, "image_size 0: not a positive integer"),
        ("ssd.image_size", "64", "image_size '64': not a positive integer"),
        (
            "ssd.image_size",
            10**9,
            "image_size 1000000000: 1000000000x1000000000 input is over the pixel budget "
            "of 64000000 (--max-pixels)",
        ),
    ],
)
def test_what_a_checkpoint_claims_is_checked_before_a_model_is_built(
    source, tmp_path, key, value, message
):
    bad = rewritten_checkpoint(
        source, tmp_path / "bad.safetensors", change=lambda meta: _set(meta["config"], key, value)
    )
    with pytest.raises(CheckpointError) as e:
        tinyssd.load(bad, device="cpu")
    assert str(e.value) == f"{bad}: {message}"


def test_an_input_size_over_the_pixel_budget_fails_predict_in_one_line(source, tmp_path, capsys):
    bad = rewritten_checkpoint(
        source,
        tmp_path / "bad.safetensors",
        change=lambda m: _set(m["config"], "ssd.image_size", 10**5),
    )
    err = _predict_error(capsys, bad, tmp_path)
    assert f"{bad}: image_size 100000: 100000x100000 input is over the pixel budget" in err
    assert tinyssd.load(source, max_pixels=64 * 64).image_size == 64  # the budget is the limit
    with pytest.raises(CheckpointError, match="over the pixel budget of 4095"):
        tinyssd.load(source, max_pixels=64 * 64 - 1)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_a_pickle_is_named_as_one_and_never_unpickled(tmp_path, writer):
    marker = tmp_path / "the-payload-ran"
    payload = {"model": _Payload(marker)}
    path = tmp_path / "model.pt"
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == (
        f"{path}: a pickle (torch.save), not a safetensors checkpoint; tinyssd reads weights "
        "only from .safetensors files and never unpickles"
    )
    assert not marker.exists()


class _Payload:
    """Unpickled, it makes a folder: what a malicious pickle does, harmlessly."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))
