"""How values of label files are read and written: numbers, 0/1 flags, file names.

Pure functions on strings and numbers, shared by every format's reader and writer.
"""

from __future__ import annotations

import math
from pathlib import Path

FLOAT32_MAX = 3.4028234663852886e38  # larger coordinates would become inf in the float32 boxes


def finite_float(value: str | float) -> float:
    """A coordinate from text or a JSON number.

    Raises:
        ValueError: not a number (booleans included), text that is not ASCII or holds
            ``_`` (``float("1_0")`` is 10), or not finite as float32.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, str) and (not value.isascii() or "_" in value):
        raise ValueError(f"{value!r} is not a plain ASCII number")  # float("١٢") is 12.0
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
        raise ValueError(f"{value!r} is not a finite number")
    return number


def read_flag(value: object) -> bool:
    """A 0/1 flag as its format means it: ``1``, ``True``, ``"1"``, ``"true"``, ``"yes"`` are
    true; ``0``, ``False``, ``"0"``, ``"false"``, ``"no"``, ``""``, None are false.

    Raises:
        ValueError: anything else (``"maybe"``, a list).
    """
    if value is None:
        return False
    if isinstance(value, (bool, int, float)) and math.isfinite(value):
        return value != 0
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "y"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "n", ""):
        return False
    raise ValueError(f"{value!r} is not a 0/1 flag")


def tidy_number(value: float) -> int | float:
    """``12.0 -> 12``, ``12.300000190734863 -> 12.3``: what label files should hold."""
    value = round(float(value), 4)
    return int(value) if value.is_integer() else value


def class_index(text: str) -> int:
    """A 0-based class index written in ASCII digits (``"3"``, ``" 3 "``).

    Raises:
        ValueError: anything else: ``"1.0"``, ``"-1"``, ``"+1"``, ``"1_0"``, or digits of
            another script (``int("٣")`` is 3, but no label file means that).
    """
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{text!r} is not a class index (0, 1, 2, ... in ASCII digits)")
    return int(digits)


def natural_key(name: str) -> tuple:
    """Sort key putting ``2.png`` before ``10.png``; other names after, alphabetically."""
    stem = Path(name).stem
    return (0, int(stem), name) if stem.isascii() and stem.isdigit() else (1, 0, name)


def free_stem(stem: str, prefix: str, taken: set[str]) -> str:
    """``stem`` if not in ``taken``, else ``{prefix}_{stem}`` (``_2``, ``_3``... if needed).

    The result is added to ``taken``. Writers use it so that images of several
    splits, or from several source folders, never overwrite one another. Bytes
    of ``stem`` that are not UTF-8 (a Latin-1 file name) become U+FFFD, so the
    label files that name the image can be written as UTF-8.
    """
    stem = utf8_name(stem)
    name = stem if stem not in taken else f"{prefix}_{stem}"
    base, n = name, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name


def utf8_name(name: str) -> str:
    """``name`` with undecodable file-name bytes (``\\udcff``) replaced by U+FFFD."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (from JSON "\\ud800")
        raw = name.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
