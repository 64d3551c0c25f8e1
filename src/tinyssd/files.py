"""Writing files so that a reader never sees half of one: the one home of atomic writes.

    with atomic_path(out / "model.safetensors") as tmp:   # any writer that takes a path
        save_file(tensors, tmp)
    atomic_write(out / "config.json", json.dumps(cfg))     # text or bytes

The data goes to a temporary name beside the target (same folder, so the final
rename is atomic on POSIX), is flushed to disk, and is renamed over the target
only when writing succeeded; on any error (a full disk, an interrupt) the
temporary file is removed and the old target, if any, is left as it was. An
OSError then names the target (``runs/x/last.safetensors: No space left on device``)
where the failed call named the temporary file or, as ``write`` does, no file.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


@contextlib.contextmanager
def atomic_path(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that choose a format by
    suffix still do) to write to; renamed over ``path`` when the block succeeds.

    The temporary file is created by the writer, so it gets the permissions any
    file written there gets (the umask's), not ``mkstemp``'s owner-only 0600.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or str(e.filename) == str(tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes, fsync: bool = True) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path
