"""The images source: what a domain's disk images and memory files take on this host, and what
the filesystems under them have left, read with stat and statvfs.

A snapshot's writes land in these files, so their growth and the free space beside them are what
an operator checks first when a create fails with the disk full.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ImageUsage:
    size_bytes: int | None  # allocated bytes of all the files; None when there are none
    free_bytes: dict[str, int] = field(default_factory=dict)  # mount point -> bytes available
    errors: tuple[str, ...] = ()  # one line per file or filesystem that could not be read


def image_usage(paths: Iterable[str]) -> ImageUsage:
    """Allocated size of the files and free space of their filesystems. A file that is gone
    (an external overlay just deleted) is skipped; one that cannot be read is an error."""
    files = [p for p in paths if p.startswith("/")]
    size, free, errors = 0, {}, []
    for path in files:
        try:
            size += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or errno.errorcode.get(exc.errno, exc)}")
            continue
        mount = mountpoint(os.path.dirname(path))
        if mount not in free:
            try:
                fs = os.statvfs(mount)
                free[mount] = fs.f_bavail * fs.f_frsize
            except OSError as exc:
                errors.append(f"{mount}: {exc.strerror}")
    return ImageUsage(size if files else None, free, tuple(errors))


def mountpoint(path: str) -> str:
    """The mount point of the filesystem holding path."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path
