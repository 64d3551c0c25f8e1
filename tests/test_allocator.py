"""The CPU training allocator setting: large tensors come from the reusable heap."""

import subprocess
import sys

import pytest
from fixtures import HEAP_PROBE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting")

# In a fresh process: is a 256 MB tensor inside the [heap] mapping?
PROBE = (
    """
import sys, torch
from tinyssd.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
"""
    + HEAP_PROBE
)


def _where(setting: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_large_tensors_come_from_the_heap_with_the_setting():
    assert _where("keep") == "heap"


def test_without_it_glibc_maps_them_afresh():
    assert _where("default") == ""
