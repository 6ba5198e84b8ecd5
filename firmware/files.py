"""Small files the terminal must never leave half written or readable by others.

`write_private(path, data)`: blocking (a few syscalls and two fsyncs), any thread. Writes a
0600 temp file beside `path` (whatever the umask), fsyncs it, renames it over `path` and
fsyncs the directory, so after a power cut `path` holds the old bytes or the new ones.
OSError on failure, with the temp file removed.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private", "write_all", "fsync_dir"]


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # independent of the umask and of a stale temp file's mode
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to the file descriptor (os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
