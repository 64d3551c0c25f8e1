"""Fixtures shared by several test modules."""

import sys

import pytest
from fixtures import find_shared

REFERENCE = find_shared() / "reference"


@pytest.fixture(scope="module")
def chapter():
    """The chapter's code, ``../shared/reference/chapter_tinyssd.py``; skips where absent."""
    if not (REFERENCE / "chapter_tinyssd.py").is_file():
        pytest.skip("../shared/reference is absent")
    pytest.importorskip("d2l.torch")
    sys.path.insert(0, str(REFERENCE))
    try:
        import chapter_tinyssd
    finally:
        sys.path.remove(str(REFERENCE))
    return chapter_tinyssd
