"""The operations log: the last N finished operations, kept in memory and on disk.

The file is JSON lines, rewritten whole through a temporary file and a rename, so a crash leaves
either the old or the new log, never half of one. A state directory that cannot be written is
reported (log line and metric) and serving goes on with the history in memory; the write is
tried again at the next flush.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOG_NAME = "operations.jsonl"


class OperationsLog:
    def __init__(self, directory: str, size: int = 1000) -> None:
        self.directory = Path(directory) if directory else None
        self.size = size
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.write_errors = 0
        self.last_write_ok = True
        self._dirty = False
        self._load()

    @property
    def path(self) -> Path | None:
        return self.directory / LOG_NAME if self.directory else None

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            lines = self.path.read_text().splitlines()
        except OSError as exc:
            log.error("cannot read operations log %s: %s", self.path, exc)
            return
        for number, line in enumerate(lines, 1):
            try:
                self._entries.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("operations log %s line %d is not JSON: skipped", self.path, number)

    def add(self, entry: dict[str, Any]) -> None:
        """Kept in memory at once; on disk at the next flush (the collection loop flushes
        once per cycle, so a burst of operations costs one write, not one each)."""
        with self._lock:
            self._entries.append(entry)
            self._dirty = True

    def entries(self) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            return list(reversed(self._entries))

    def flush(self) -> None:
        """Write the log if anything was added since the last write."""
        with self._lock:
            if self._dirty:
                self._flush_locked()

    def _flush_locked(self) -> None:
        if self.directory is None:
            return
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in self._entries)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".operations.", dir=self.directory)
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(text)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.directory / LOG_NAME)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self.write_errors += 1
            if self.last_write_ok:
                log.error("cannot write operations log in %s: %s (history kept in memory)",
                          self.directory, exc)
            self.last_write_ok = False
            return
        if not self.last_write_ok:
            log.info("operations log in %s writable again", self.directory)
        self.last_write_ok = True
        self._dirty = False
