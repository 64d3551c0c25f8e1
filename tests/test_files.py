"""Atomic writes: all or nothing, with the permissions a plain write would give."""

import os
import stat

import pytest

from tinyssd.files import atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_written_files_get_the_umask_permissions_like_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        atomic_write(tmp_path / "atomic.txt", "x")
        with atomic_path(tmp_path / "picture.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "picture.png").stat().st_mode) == mode


def test_the_temporary_keeps_the_suffix_for_writers_that_choose_a_format_by_it(tmp_path):
    with atomic_path(tmp_path / "grid.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "grid.png").read_bytes() == b"png"


def test_a_full_disk_names_the_target_not_the_temporary(tmp_path):
    import errno

    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(OSError) as e, atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a failed write() raises
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(target))
    assert str(e.value).endswith(f"No space left on device: '{target}'")
    with pytest.raises(PermissionError) as e, atomic_path(target) as tmp:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert e.value.filename == str(target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [target.name]
