"""Errors by kind. The CLI prints any of them as one line and exits with code 2.

- :class:`DataError`: the input data is bad (a file, a record, a split).
- :class:`UsageError`: the request is bad (an argument, a device, a precision).
- :class:`CheckpointError`: a checkpoint is missing, unreadable or of another kind.
"""

from __future__ import annotations


def escape_control(text: str) -> str:
    """``text`` with control characters written as escapes: ``"a\\nb"`` for a newline.

    Everything tinyssd prints that a user or a data set supplies (file names,
    class names) goes through it, so a name cannot break a line or send
    terminal codes. Undecodable bytes of a file name (``\\udcff``) are escaped too.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): what
    a one-line error quotes of a library's exception."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class TinySSDError(ValueError):
    """Base of tinyssd's own errors: a one-line message meant for the user.

    Control characters in the message (a newline in a file name) are escaped.
    """

    def __init__(self, message: str) -> None:
        super().__init__(escape_control(str(message)))


class DataError(TinySSDError):
    """Bad input data. The message is one line: ``path[:line]: what is wrong``."""


class UsageError(TinySSDError):
    """A bad argument or setting; the message names the option."""


class CheckpointError(TinySSDError):
    """A checkpoint that cannot be used; the message names the file."""
