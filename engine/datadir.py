"""The data directory: private to its owner, and used by one engine at a time.

:func:`lock_data_dir` creates the directory with mode 0700 (or makes an existing one of ours
0700) and takes an exclusive ``flock`` on ``<data_dir>/LOCK``, which holds the holder's pid. The
lock lives as long as its file descriptor: :meth:`DataDirLock.release`, or the end of the process
however it ends, frees it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from engine.errors import StartupRefused

LOCK = "LOCK"


class DataDirLock:
    """The exclusive lock on a data directory, held until :meth:`release`."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_data_dir(directory: Path) -> DataDirLock:
    """Create ``directory`` private and lock it; refuse when it is in use or cannot be written."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_uid == os.getuid():
            directory.chmod(0o700)
        fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise unusable(directory, error) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StartupRefused(
            f"data directory {directory} is in use by pid {holder} (another recbandit server?)"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as error:
        os.close(fd)
        raise unusable(directory, error) from error
    return DataDirLock(directory, fd)


def unusable(directory: Path, error: OSError) -> StartupRefused:
    """Why ``directory`` cannot hold recbandit's data, from the error that said so."""
    if error.errno == errno.EROFS:
        return StartupRefused(f"data directory {directory} is on a read-only file system")
    if error.errno in (errno.EACCES, errno.EPERM):
        return StartupRefused(f"data directory {directory} is not writable by this user ({error.strerror}: {error.filename})")
    return StartupRefused(f"data directory {directory} cannot be used ({error.strerror}: {error.filename})")
