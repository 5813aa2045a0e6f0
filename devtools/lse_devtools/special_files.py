"""Files that are no regular file, put where the exporter reads one (its log, a trace, the
rate seed, the config): what store/safe_file.py must refuse at once, never read or wait on."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def make_special(path: Path, kind: str) -> None:
    """path as a `directory`, a `fifo` (nobody writes to it: a plain open() would wait
    forever), a `device` (/dev/zero's: endless), a `symlink to a device` or a
    `dangling symlink`."""
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    elif kind == "symlink to a device":
        path.symlink_to("/dev/zero")
    elif kind == "dangling symlink":
        path.symlink_to(path.parent / "nowhere")
    else:
        raise ValueError(f"no special file of kind {kind!r}")
