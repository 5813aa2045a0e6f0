"""What the routes answer about operations: /api/operations (in flight, then one page of the
log, newest first) and one logged operation with its trace and verdict (its page, and
/api/operations/<id>/trace and /verdict).

Each page's JSON is rendered once per version of the log and sent as the very bytes kept (no
copy per request), so clients looping on the API, or not reading what they asked for, cost
little more than the bytes they fetch. An operation is found by its id in the log's index: a
missing id costs one look-up, whatever the log's size.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from ..model.operation import FinishedOperation, Verdict
from ..model.trace import Trace
from ..store.oplog import OperationsLog
from ..store.trace_store import logged_trace
from ..store.view import StateStore
from .page_cache import PageCache

PAGE_DEFAULT = 1000  # operations per /api/operations page unless ?limit= says otherwise
PAGE_MAXIMUM = 10_000
OFFSET_MAXIMUM = 10**9  # beyond any log size: answers an empty page
PAGE_CACHE_SIZE = 16  # pages kept rendered...
PAGE_CACHE_BYTES = 64 * 2**20  # ...in this many bytes (a page of 10,000 entries: ~15 MB)
TRACE_RECHECK_SECONDS = 1.0  # a logged operation's trace is read at most this often...
TRACES_KEPT = 32  # ...for this many operations...
TRACES_KEPT_BYTES = 64 * 2**20  # ...in this many bytes

Judged = tuple[FinishedOperation, Trace | None, Verdict | None]


class BadRequest(ValueError):
    """A query parameter out of range; the message says which."""


class Traces(Protocol):
    """Where operation traces are found (the flight recorder)."""

    def get(self, trace_id: str) -> bytes | None: ...


def int_param(params: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    """The last value given for name, digits only, from low to high; else BadRequest."""
    values = params.get(name)
    if not values:
        return default
    text = values[-1]
    if (not (text.isascii() and text.isdigit()) or len(text) > len(str(high))
            or not low <= int(text) <= high):
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(text)


class OperationsApi:
    def __init__(self, store: StateStore, oplog: OperationsLog,
                 traces: Traces | None = None) -> None:
        self.store = store
        self.oplog = oplog
        self.traces = traces  # None: trace.operations is 0
        self._pages: PageCache[bytes] = PageCache(PAGE_CACHE_SIZE, PAGE_CACHE_BYTES, len)
        self._traces: PageCache[bytes | None] = PageCache(
            TRACES_KEPT, TRACES_KEPT_BYTES, lambda body: len(body or b""))

    def in_flight(self) -> list[dict[str, Any]]:
        """Operations in flight, as they stand now, with their domain's OpenStack instance name
        as the domain's XML last gave it (a finished operation's is kept in its entry)."""
        now = time.time()
        view = self.store.view
        in_flight = []
        for item in view.in_flight:
            op = item.facts
            domain = view.domains.get(op.domain)
            in_flight.append({
                "id": item.id, "domain": op.domain,
                "instance_name": domain.openstack.name if domain and domain.openstack else None,
                "snapshot": op.snapshot, "operation": op.operation,
                "kind": op.kind, "memory": op.memory, "depth": op.depth,
                "start": round(op.start, 3), "elapsed_seconds": round(now - op.start, 3),
                "start_source": op.start_source, "progress_estimate": item.progress_estimate,
                "memory_processed_bytes": op.memory_processed_bytes,
                "memory_remaining_bytes": op.memory_remaining_bytes,
                **item.context,
            })
        return in_flight

    def operations_json(self, params: dict[str, list[str]]) -> list[bytes]:
        """In flight (always all of them, a handful), then the page of the log that `offset`
        and `limit` ask for; `next_offset` is where the next page starts (null after the last).
        In chunks: the page's are the cached bytes themselves, never a copy per request."""
        offset = int_param(params, "offset", 0, 0, OFFSET_MAXIMUM)
        limit = int_param(params, "limit", PAGE_DEFAULT, 1, PAGE_MAXIMUM)
        in_flight = json.dumps(self.in_flight()).encode()
        return [b'{"in_flight": ' + in_flight + b", ", self._log_page(offset, limit), b"}"]

    def _log_page(self, offset: int, limit: int) -> bytes:
        """The '"operations": [...], ...' part, rendered once per version of the log (and once
        for clients asking for it at once)."""
        return self._pages.get((offset, limit), self.oplog.version,
                               lambda: self._render_page(offset, limit))

    def _render_page(self, offset: int, limit: int) -> bytes:
        entries, total = self.oplog.page(offset, limit)
        following = offset + len(entries)
        return json.dumps({
            "operations": [{**e.to_json(), "id": e.id} for e in entries],
            "total": total, "offset": offset,
            "limit": limit,
            "next_offset": following if following < total else None,
        }).encode()[1:-1]

    def trace_json(self, trace_id: str) -> bytes | None:
        """The trace's JSON. A logged operation's is read (and checked: a trace file is
        trusted no more than the log) at most once per TRACE_RECHECK_SECONDS, so clients
        asking for it, its page or its verdict in a loop cost no reading each; a trace coming
        or going shows within that time. Any other id is asked of the traces each time (one
        look-up for one they do not hold), and fills nothing."""
        if self.traces is None:
            return None
        if self.oplog.get(trace_id) is None:
            return self.traces.get(trace_id)
        period = int(time.monotonic() / TRACE_RECHECK_SECONDS)
        return self._traces.get(trace_id, period, lambda: self.traces.get(trace_id))

    def verdict_json(self, trace_id: str) -> bytes | None:
        """The verdict on an operation whose trace is kept; None without either (the log's
        index answers first, so a missing id never reads a trace)."""
        entry = self.oplog.get(trace_id)
        if entry is None or entry.verdict is None or self.trace_json(trace_id) is None:
            return None
        return json.dumps({"id": trace_id, **entry.verdict.to_json()}).encode()

    def found(self, trace_id: str) -> tuple[FinishedOperation, bytes | None] | None:
        """A logged operation and its trace's JSON (None when not kept); None when the
        operation has left the log: what its page is made from."""
        entry = self.oplog.get(trace_id)
        return None if entry is None else (entry, self.trace_json(trace_id))

    def judged(self, trace_id: str) -> Judged | None:
        """A logged operation, its trace (None when not kept) and its verdict (None before its
        trace was complete); None when the operation has left the log."""
        found = self.found(trace_id)
        return None if found is None else judged(*found)


def judged(entry: FinishedOperation, body: bytes | None) -> Judged:
    """The entry with its trace read from its JSON (none unless the trace is of the entry's
    domain and operation: its id alone names the file). The verdict is verdict/keeper.py's,
    given once the trace was complete: none while it is still being sampled."""
    try:
        trace = logged_trace(entry, body) if body is not None else None
    except (ValueError, RecursionError):  # another operation's trace under this id
        trace = None
    return entry, trace, entry.verdict
