"""Errors by kind. The CLI prints any of them as one line and exits with code 2.

- :class:`DataError`: the input data is bad (a file, a record, a split).
- :class:`UsageError`: the request is bad (an argument, a device, a precision).
- :class:`CheckpointError`: a checkpoint is missing, unreadable or of another kind.
"""

from __future__ import annotations


class TinySSDError(ValueError):
    """Base of tinyssd's own errors: a one-line message meant for the user."""


class DataError(TinySSDError):
    """Bad input data; the message names the file (and line or record)."""


class UsageError(TinySSDError):
    """A bad argument or setting; the message names the option."""


class CheckpointError(TinySSDError):
    """A checkpoint that cannot be used; the message names the file."""
