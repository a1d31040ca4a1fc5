"""User-facing error types: each message is one sentence naming the cause and the fix.

``slm`` prints an ``SlmError`` as one line and exits with its ``exit_code`` (2 unless the
error says otherwise); docs/reliability.md lists the exit codes.
"""

from __future__ import annotations

import errno
import os
import re


class SlmError(Exception):
    """Base class for mistakes a user can fix; the CLI prints the message without a traceback."""

    exit_code = 2


class ConfigError(SlmError, ValueError):
    """A config key, value or combination is invalid."""


class DataError(SlmError, ValueError):
    """Input data is missing, empty, undecodable or too short."""


class CheckpointError(SlmError, ValueError):
    """A checkpoint or run directory cannot be used as asked."""


# The write failures that are the machine's state, not a bug: each has a fix the user can apply.
WRITE_ERRNOS = {
    errno.ENOSPC: "free some space there or write to a bigger disk",
    errno.EDQUOT: "free some of your quota there or write to another disk",
    errno.EROFS: "write to a writable file system instead",
    errno.EACCES: "fix its permissions or write to a directory you own",
    errno.EPERM: "fix its permissions or write to a directory you own",
    errno.ENOTDIR: "a parent of that path is a file, not a directory; pass another path",
    errno.EEXIST: "a file is in the way of a directory there; pass another path",
}


def write_errno(exc: BaseException) -> int | None:
    """The errno of a write failure in ``WRITE_ERRNOS`` behind ``exc``, or None.

    Looks through the exception chain for an ``OSError``, and into the text of the
    ``ValueError`` that tensorstore raises for a failed write (``[os_error_code='28']``).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            return exc.errno
        code = re.search(r"os_error_code='(\d+)'", str(exc))
        if code and int(code.group(1)) in WRITE_ERRNOS:
            return int(code.group(1))
        exc = exc.__cause__ or exc.__context__
    return None


def write_failure(what: str, code: int, detail: str = "", then: str = "") -> str:
    """``"<what> failed: <strerror><detail>; <fix><then>."`` for an errno of ``WRITE_ERRNOS``."""
    return f"{what} failed: {os.strerror(code).lower()}{detail}; {WRITE_ERRNOS[code]}{then}."
