"""The run folder never overwrites what is not its own, and one training holds it."""

import pytest

from tinyssd.engine.run_folder import RunFolder, new_run_dir
from tinyssd.errors import UsageError


def test_new_runs_are_numbered_like_ultralytics(tmp_path):
    assert new_run_dir(tmp_path) == tmp_path / "train"
    (tmp_path / "train").mkdir()
    assert new_run_dir(tmp_path) == tmp_path / "train2"
    (tmp_path / "train2").mkdir()
    assert new_run_dir(tmp_path) == tmp_path / "train3"


def test_an_existing_non_empty_folder_is_refused_unless_allowed(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UsageError, match="exists and is not empty.*--exist-ok"):
        RunFolder(tmp_path, own=False)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    RunFolder(tmp_path, own=True).close()


def test_an_empty_or_new_folder_is_taken(tmp_path):
    RunFolder(tmp_path / "new", own=False).close()
    RunFolder(tmp_path / "new", own=False).close()  # only the lock file in it: still ours


def test_a_second_training_on_the_same_folder_is_refused(tmp_path):
    first = RunFolder(tmp_path / "run", own=False)
    with pytest.raises(UsageError, match="another training is writing there"):
        RunFolder(tmp_path / "run", own=True)
    first.close()
    RunFolder(tmp_path / "run", own=True).close()


def test_a_folder_that_cannot_be_made_is_one_usage_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="cannot write there"):
        RunFolder(tmp_path / "file" / "run", own=False)


def test_a_failed_write_leaves_neither_a_half_file_nor_a_temporary_one(tmp_path):
    from tinyssd.files import atomic_path

    (tmp_path / "curves.png").write_bytes(b"old")
    with pytest.raises(OSError), atomic_path(tmp_path / "curves.png") as tmp:
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")
    assert (tmp_path / "curves.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    with atomic_path(tmp_path / "curves.png") as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "curves.png").read_bytes() == b"new"


def test_checkpoints_hold_the_config_the_run_started_with(tmp_path):
    import torch

    from tinyssd.checkpoint import read_checkpoint

    run = RunFolder(tmp_path / "run", own=False)
    run.start({"classes": ["a"], "train": {"lr": 0.1}})
    (tmp_path / "run" / "config.json").unlink()  # saving does not read it back
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.save(model, optimizer, epoch=1, extra={"best_ap": 0.5}, best=True)
    run.close()
    for name in ("last", "best"):
        tensors, meta = read_checkpoint(tmp_path / "run" / f"{name}.safetensors")
        assert meta["config"] == {"classes": ["a"], "train": {"lr": 0.1}}
        assert meta["epoch"] == 1 and meta["extra"] == {"best_ap": 0.5}
        torch.testing.assert_close(tensors["model.weight"], model.weight.detach())


def _saved_run(path):
    import torch

    run = RunFolder(path, own=False)
    run.start({"classes": ["a"]})
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run.save(model, optimizer, epoch=1, extra={}, best=True)
    return run, model, optimizer


def test_a_full_disk_under_safetensors_is_an_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    from tinyssd import checkpoint
    from tinyssd.checkpoint import read_checkpoint

    run, model, optimizer = _saved_run(tmp_path / "run")

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # a writer stopped half way
            f.write(b"half")
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with pytest.raises(OSError) as e:
        run.save(model, optimizer, epoch=2, extra={}, best=True)
    run.close()
    last = tmp_path / "run" / "last.safetensors"
    assert (e.value.filename, e.value.strerror) == (str(last), "No space left on device")
    assert read_checkpoint(last)[1]["epoch"] == 1  # the one written before stays readable
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp" in p.name]


def test_the_out_check_creates_nothing_and_sees_another_trainings_lock(tmp_path):
    from tinyssd.engine.run_folder import check_out

    check_out(tmp_path / "new", own=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        check_out(tmp_path / "mine.txt", own=False)
    with pytest.raises(UsageError, match="exists and is not empty"):
        check_out(tmp_path, own=False)
    check_out(tmp_path, own=True)
    running = RunFolder(tmp_path / "run", own=False)
    with pytest.raises(UsageError, match="another training is writing there"):
        check_out(tmp_path / "run", own=True)
    running.close()
    check_out(tmp_path / "run", own=True)
