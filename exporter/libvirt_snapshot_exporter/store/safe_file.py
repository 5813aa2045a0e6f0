"""Every file the exporter reads while it runs (its traces, the operations log, the rate seed,
the config and web config files and what they name) is opened here, one way: a regular file
(a FIFO, a device or a directory in its place is refused at once, never waited on), not
followed through a symbolic link where the exporter wrote it itself, and read once within a
bound on its size, so whatever someone puts in its place costs one log line, not a thread
or the memory.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, BinaryIO

MiB = 2**20
CHUNK = MiB


class BadFile(Exception):
    """Why a file was not read, in words for one log line."""


class MissingFile(BadFile):
    """There is no file at the path (for the operations log: none written yet)."""


def open_regular(path: str | os.PathLike[str], follow_symlinks: bool = True) -> BinaryIO:
    """An open regular file; BadFile (MissingFile when there is none) otherwise. Opened
    without blocking, so a FIFO without a writer is refused rather than waited on."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MissingFile(os.strerror(errno.ENOENT)) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise BadFile("a symbolic link, not followed") from None
        raise BadFile(exc.strerror or str(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BadFile(os.strerror(errno.EISDIR))
        if not stat.S_ISREG(mode):
            raise BadFile("not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_bounded(path: str | os.PathLike[str], max_bytes: int,
                 follow_symlinks: bool = True) -> bytes:
    """The whole file, read once; BadFile when it is not a regular file or holds more than
    max_bytes (checked as it is read: a file that grows meanwhile is caught too)."""
    with open_regular(path, follow_symlinks) as handle:
        chunks, size = [], 0
        try:
            while size <= max_bytes and (chunk := handle.read(min(CHUNK, max_bytes + 1 - size))):
                chunks.append(chunk)
                size += len(chunk)
        except OSError as exc:
            raise BadFile(exc.strerror or str(exc)) from None
    if size > max_bytes:
        raise BadFile(f"larger than {max_bytes:,} bytes")
    return b"".join(chunks)


def no_constants(name: str) -> Any:
    """json.loads' parse_constant: Python reads NaN and Infinity, which are no JSON numbers."""
    raise ValueError(f"{name} is not a JSON number")
