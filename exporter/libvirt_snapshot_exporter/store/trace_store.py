"""The traces of the last N operations, bounded in count and bytes, in memory and on disk.

Each trace is one JSON file, `<state.directory>/traces/<operation id>.json`, written once
through a temporary file and a rename when the flight recorder finishes it, so traces survive
restarts and a crash leaves whole files. With a state directory only the index (id, size) is
in memory and a trace is read when asked for; without one the traces' JSON is kept in memory,
under the same bounds. The oldest traces go first when either bound is passed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..model.trace import Trace, from_json
from .atomic_file import write_atomically

log = logging.getLogger(__name__)

TRACE_DIRECTORY = "traces"
SUFFIX = ".json"


class TraceStore:
    def __init__(self, state_directory: str, count: int, max_bytes: int) -> None:
        self.directory = Path(state_directory) / TRACE_DIRECTORY if state_directory else None
        self.count = count
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[str, int] = OrderedDict()  # oldest first
        self._memory: dict[str, bytes] = {}  # without a state directory only
        self._write_failed = False
        self.write_seconds = 0.0  # the last write's
        if self.directory is not None:
            self._load_index()

    def _load_index(self) -> None:
        try:
            files = [(f.stat().st_mtime, f) for f in self.directory.glob("*" + SUFFIX)
                     if f.is_file()]
        except OSError as exc:
            log.warning("traces in %s: %s (starting without)", self.directory, exc.strerror)
            return
        for _mtime, path in sorted(files):
            self._sizes[path.name[: -len(SUFFIX)]] = path.stat().st_size
        with self._lock:
            self._evict_locked()

    def add(self, trace: Trace) -> None:
        """Keep a finished trace (called by the recorder's thread, never the collection loop)."""
        body = json.dumps(trace.to_json(), separators=(",", ":")).encode()
        if len(body) > self.max_bytes:
            log.warning("trace of %s/%s is %d bytes, over trace.max-bytes: not kept",
                        trace.domain, trace.snapshot, len(body))
            return
        if self.directory is not None and not self._write(trace.id, body):
            return
        with self._lock:
            self._sizes.pop(trace.id, None)
            self._sizes[trace.id] = len(body)
            if self.directory is None:
                self._memory[trace.id] = body
            self._evict_locked()

    def get(self, trace_id: str) -> bytes | None:
        """The trace's JSON, or None when there is none (never was, evicted, or unreadable)."""
        with self._lock:
            if trace_id not in self._sizes:
                return None
            if self.directory is None:
                return self._memory[trace_id]
        path = self.directory / (trace_id + SUFFIX)
        try:
            body = path.read_bytes()
            from_json(json.loads(body))
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("trace %s: %s: dropped", path, getattr(exc, "strerror", None) or exc)
            with self._lock:
                self._sizes.pop(trace_id, None)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return body

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._sizes)

    @property
    def writable(self) -> bool:
        """False while writing traces fails (the traces source's success)."""
        return not self._write_failed

    def _write(self, trace_id: str, body: bytes) -> bool:
        started = time.monotonic()
        try:
            write_atomically(self.directory, trace_id + SUFFIX, body)
        except OSError as exc:
            self.write_seconds = time.monotonic() - started
            if not self._write_failed:
                log.error("cannot write traces in %s: %s", self.directory, exc.strerror)
            self._write_failed = True
            return False
        self._write_failed = False
        self.write_seconds = time.monotonic() - started
        return True

    def _evict_locked(self) -> None:
        total = sum(self._sizes.values())
        while self._sizes and (len(self._sizes) > self.count or total > self.max_bytes):
            trace_id, size = self._sizes.popitem(last=False)
            total -= size
            self._memory.pop(trace_id, None)
            if self.directory is not None:
                with contextlib.suppress(OSError):
                    (self.directory / (trace_id + SUFFIX)).unlink()
