"""Optional dependencies, imported only by the functions that need them.

``import tinyssd`` never imports them; a missing one is a one-line
:class:`~tinyssd.errors.UsageError` that names the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UsageError


def require(module: str, extra: str) -> ModuleType:
    """``import module``, or UsageError saying ``pip install 'tinyssd[extra]'``.

    >>> av = require("av", "video")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"{module} is not installed; it comes with: pip install 'tinyssd[{extra}]'"
        ) from None
