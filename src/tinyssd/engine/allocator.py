"""Host memory allocator settings for training on the CPU.

A TinySSD training step at batch 32 allocates activations of 30 to 130 MB
each. glibc's ``malloc`` serves blocks that large with a fresh ``mmap`` and
unmaps them when they are freed, so on every step the kernel maps and
zero-fills those pages again on first touch. Measured on this project's
2-core machine that costs a third of the step or more (``bench/train.py``
reports it). Keeping freed memory in the heap for reuse removes the cost; the
price is that the process holds on to its peak memory until it exits, which
is what a training process wants anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults for them (malloc/malloc.c: DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
_DEFAULT_MMAP_MAX = 65536
_DEFAULT_TRIM_THRESHOLD = 128 * 1024


def _mallopt(mmap_max: int, trim_threshold: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, mmap_max)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from the heap and never trim it.

    Process-wide until :func:`restore_default_memory`; a no-op (returning
    False) where the C library is not glibc. Returns True when applied.
    """
    return _mallopt(0, 2**31 - 1)


def restore_default_memory() -> bool:
    """glibc's default large-block settings again (mmap for large blocks, trim the heap)."""
    return _mallopt(_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[None]:
    """:func:`keep_freed_memory` for the duration of a block (training), then the defaults."""
    applied = enabled and keep_freed_memory()
    try:
        yield
    finally:
        if applied:
            restore_default_memory()
