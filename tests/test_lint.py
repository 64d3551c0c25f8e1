"""`make lint` as part of `make test`, so CI keeps the code ruff-clean and mypy-clean."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
RUFF = shutil.which("ruff", path=BIN) or shutil.which("ruff")
MYPY = shutil.which("mypy", path=BIN) or shutil.which("mypy")


@pytest.mark.skipif(RUFF is None, reason="ruff not installed (make setup installs it)")
@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(args):
    done = subprocess.run(
        [RUFF, *args, "src", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(MYPY is None, reason="mypy not installed (make setup installs it)")
def test_mypy_is_clean():
    # files and settings come from pyproject.toml's [tool.mypy]
    done = subprocess.run([MYPY], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
