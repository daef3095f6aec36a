"""One error type for everything a user can get wrong.

Raise ``BenchError`` with a single line that names the file and key at fault. The CLI prints
``error: <message>`` and exits with status 2; no traceback, and callers must not have written partial
output before raising (write to a temp file and rename at the end).
"""


class BenchError(Exception):
    """A user-facing error: bad input, bad file, bad option. The message is one line."""

    exit_code = 2


class CheckpointError(BenchError):
    """A checkpoint is missing, corrupt, of an unknown format, or of another architecture."""


class DataError(BenchError):
    """A dataset on disk is missing files or has malformed annotations."""


class WriteError(BenchError, OSError):
    """A file could not be written (a full disk, a read-only folder); the previous file is kept. Also an
    ``OSError``, so code that handles failed writes as ``OSError`` keeps doing so."""

    def __str__(self) -> str:  # the one line, not OSError's "[Errno N] ..." form
        return str(self.args[0]) if self.args else ""


class NonFiniteLossError(BenchError):
    """Training produced a non-finite loss more times than allowed."""

    exit_code = 3


def first_line(exc: BaseException, *, with_type: bool = False, limit: int = 400) -> str:
    """The first non-empty line of ``str(exc)`` (the type name when it has none), at most ``limit``
    characters: what a one-line error message quotes from a library's exception."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if with_type or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` cut to at most ``limit`` characters: how a one-line message quotes a bad value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
