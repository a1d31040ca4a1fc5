"""One writer per run directory: an exclusive OS file lock on ``<run_dir>/.lock``.

``slm train``, ``slm distill``, ``slm finetune`` and every sweep point hold the lock of the
directory they write while they run; a second process on the same directory stops at once
with one sentence naming the holder's PID and host (written into the file), exit code 2.

The lock is ``fcntl.flock``, so the kernel releases it whenever the holder's file descriptor
closes: on a normal return, an exception, and also on SIGKILL or a crash. A ``.lock`` file
left behind by a dead process is therefore never stale: the next run simply takes it (the
PID inside is only a hint for the message). ``flock`` is reliable on local disks; on NFS it is
advisory at best, which docs/reliability.md says. In multi-host runs only process 0 locks:
the other processes write no run files.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from slm_jax.errors import CheckpointError, SlmError, write_errno, write_failure

LOCK_FILE = ".lock"


class RunDirLocked(SlmError):
    """Another live process holds the run directory's lock."""


def _first_file_above(path: Path) -> Path | None:
    """The nearest ancestor of ``path`` (or ``path`` itself) that exists as a non-directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _open_lock_file(run_dir: Path) -> int:
    """Create ``run_dir`` if needed and open its lock file; a path under a file or a read-only disk is one sentence."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        return os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        blocker = _first_file_above(run_dir)
        if blocker is not None:
            raise CheckpointError(
                f"Cannot use {run_dir} as a run directory: {blocker} is a file, not a directory; "
                "pass another directory."
            ) from None
        code = write_errno(e)
        if code is None:
            raise
        raise CheckpointError(write_failure(f"Writing to the run directory {run_dir}", code)) from None


def _holder(fd: int) -> str:
    """``PID 123 on host`` from the lock file's contents, as far as the holder has written them."""
    os.lseek(fd, 0, os.SEEK_SET)
    words = os.read(fd, 256).decode(errors="replace").split()
    return f"PID {words[0]} on {words[1]}" if len(words) >= 2 else "a process that has not yet written its PID"


def acquire(run_dir: str | Path) -> int:
    """Take the lock of ``run_dir`` (created if missing); return the open descriptor that holds it.

    Raises:
      RunDirLocked: another process holds it; the message names its PID and host.
    """
    run_dir = Path(run_dir)
    fd = _open_lock_file(run_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            raise
        holder = _holder(fd)
        os.close(fd)
        raise RunDirLocked(
            f"{run_dir} is in use by another run ({holder}); "
            "wait for it to finish or stop it, or pass another directory."
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


@contextlib.contextmanager
def run_lock(run_dir: str | Path, primary: bool = True) -> Iterator[None]:
    """Hold the lock of ``run_dir`` for the ``with`` block; ``primary`` False (a multi-host process > 0) skips it."""
    if not primary:
        yield
        return
    fd = acquire(run_dir)
    try:
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
