"""What a reader accepts: the one object that carries the data limits to every reader.

``--max-pixels`` and ``--max-boxes`` (and the environment variables that set
their defaults, ``$TINYSSD_MAX_PIXELS`` / ``$TINYSSD_MAX_BOXES``) become one
:class:`DataLimits`, passed down to the readers, the dataset and its loader
workers as an argument (never through ``os.environ``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DataError

MAX_IMAGE_PIXELS = 64_000_000  # decompression-bomb guard, checked from the image header
MAX_PIXELS_ENV = "TINYSSD_MAX_PIXELS"
MAX_BOXES_PER_IMAGE = 500  # the first ones are kept; the cost of matching grows with M
MAX_BOXES_ENV = "TINYSSD_MAX_BOXES"


def _positive_env(name: str, default: int, what: str) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
        if number <= 0:
            raise ValueError
    except ValueError:
        raise DataError(f"{name}={value!r}: not a positive number of {what}") from None
    return number


@dataclass(frozen=True)
class DataLimits:
    """Limits on the input a reader accepts.

    Attributes:
        max_pixels: images with more pixels are skipped (counted), read from the header.
        max_boxes: boxes kept per image (the first ones; the rest are counted).
    """

    max_pixels: int = MAX_IMAGE_PIXELS
    max_boxes: int = MAX_BOXES_PER_IMAGE

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_boxes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise DataError(f"--{name.replace('_', '-')} {value!r}: must be a positive integer")

    @classmethod
    def from_env(cls, max_pixels: int | None = None, max_boxes: int | None = None) -> DataLimits:
        """The given values, else ``$TINYSSD_MAX_PIXELS`` / ``$TINYSSD_MAX_BOXES``, else the
        defaults. DataError for an environment variable that is not a positive integer."""
        return cls(
            max_pixels=max_pixels
            if max_pixels is not None
            else _positive_env(MAX_PIXELS_ENV, MAX_IMAGE_PIXELS, "pixels"),
            max_boxes=max_boxes
            if max_boxes is not None
            else _positive_env(MAX_BOXES_ENV, MAX_BOXES_PER_IMAGE, "boxes"),
        )
