"""The traces of the last N operations, bounded in count and bytes, in memory and on disk.

Each trace is one JSON file, `<state.directory>/traces/<operation id>.json`, written once
through a temporary file and a rename when the flight recorder finishes it, so traces survive
restarts and a crash leaves whole files. With a state directory only the index (id, size) is
in memory and a trace is read when asked for; without one the traces' JSON is kept in memory,
under the same bounds. The oldest traces go first when either bound is passed.

A trace file is read through safe_file (a regular file, not a symbolic link, at most
MAX_TRACE_BYTES) and checked by model/trace.py's from_json against the name it was found
under; one that fails is dropped (its file removed) with one log line and answered as no
trace. One entry of the directory that cannot be read is skipped alone: the others are
indexed, and evicted in their turn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..model.operation import ID, FinishedOperation
from ..model.printable import printable
from ..model.trace import Trace, from_json
from .atomic_file import write_atomically
from .safe_file import BadFile, no_constants, read_bounded

log = logging.getLogger(__name__)

TRACE_DIRECTORY = "traces"
SUFFIX = ".json"
# The largest trace the recorder writes is some 0.5 MB (1,201 points of every figure, 18 thread
# keys); within model/trace.py's bounds on points and columns a trace is under 4 MiB. A file
# over it is no trace: reading it would cost its size many times over in memory per request.
MAX_TRACE_BYTES = 4 * 2**20


def parse(body: bytes, trace_id: str | None = None) -> Trace:
    """A trace's JSON as written by the store; ValueError (or RecursionError for nesting too
    deep) for anything else (model/trace.py's from_json says what)."""
    return from_json(json.loads(body, parse_constant=no_constants), trace_id)


def logged_trace(entry: FinishedOperation, body: bytes) -> Trace:
    """The trace of a logged operation, from its JSON: parse's, and of the entry's domain and
    operation too (a trace file is named by the operation's id alone); ValueError (or
    RecursionError) for anything else."""
    trace = parse(body, entry.id)
    if (trace.domain, trace.operation) != (entry.domain, entry.operation):
        raise ValueError(f"the trace of {trace.operation} of {printable(trace.domain)}")
    return trace


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
        """The traces on disk, oldest first; an entry that is not a trace's file, or cannot be
        looked at, is skipped alone (one log line for all of them)."""
        found, skipped, first = [], 0, ""
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    why = _not_a_trace(entry)
                    if why is None:
                        info = entry.stat(follow_symlinks=False)  # cached by _not_a_trace
                        found.append((info.st_mtime, entry.name[: -len(SUFFIX)], info.st_size))
                    elif why:
                        skipped += 1
                        first = first or f"{printable(entry.name[:80])}: {why}"
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("traces in %s: %s (starting with the %d read)", self.directory,
                            exc.strerror, len(found))
        if skipped:
            log.warning("traces in %s: skipped %d entries that are not traces (first: %s)",
                        self.directory, skipped, first)
        for _mtime, trace_id, size in sorted(found):
            self._sizes[trace_id] = size
        with self._lock:
            self._evict_locked()

    def add(self, trace: Trace) -> None:
        """Keep a finished trace (called by the recorder's thread, never the collection loop),
        checked as it will be when read back: one that would not read back is not kept."""
        data = trace.to_json()
        try:
            from_json(data, trace.id)
        except ValueError as exc:
            log.warning("trace of %s/%s not kept: %s", printable(trace.domain),
                        printable(trace.snapshot), exc)
            return
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        if len(body) > min(self.max_bytes, MAX_TRACE_BYTES):
            log.warning("trace of %s/%s is %d bytes, over trace.max-bytes or %d: not kept",
                        printable(trace.domain), printable(trace.snapshot), len(body),
                        MAX_TRACE_BYTES)
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
        """The trace's JSON, or None when there is none (never was, evicted, or not a trace
        when read: then dropped, with one log line)."""
        with self._lock:
            if trace_id not in self._sizes:
                return None
            if self.directory is None:
                return self._memory[trace_id]
        path = self.directory / (trace_id + SUFFIX)
        try:
            body = read_bounded(path, MAX_TRACE_BYTES, follow_symlinks=False)
            parse(body, trace_id)
        except (BadFile, ValueError, RecursionError) as exc:
            log.warning("trace %s: %s: dropped", path, str(exc)[:200])
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


def _not_a_trace(entry: os.DirEntry[str]) -> str | None:
    """None for a trace's file; '' for what the store leaves aside unsaid (a file being
    written); else why the entry is no trace."""
    name = entry.name
    if name.startswith("."):  # write_atomically's temporary files
        return ""
    if not (name.endswith(SUFFIX) and ID.fullmatch(name[: -len(SUFFIX)])):
        return "not named <operation id>.json"
    try:
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError as exc:
        return exc.strerror or str(exc)
    return None if stat.S_ISREG(mode) else "not a regular file"
