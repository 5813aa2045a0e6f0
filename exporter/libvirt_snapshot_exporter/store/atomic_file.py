"""Files written whole or not at all: a temporary file beside the target, then a rename, so a
crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(directory: Path, name: str, data: bytes, fsync: bool = False) -> None:
    """Raises OSError (the directory cannot be made or written); nothing is left behind then.
    fsync: on disk before the rename, for what must survive a power cut (the operations log)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
