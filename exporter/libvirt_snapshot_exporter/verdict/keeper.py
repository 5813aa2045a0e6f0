"""The one place an operation is judged: once its trace is complete (3 s after its end), its
host figures are read again from the trace and its verdict given, and both are kept in its log
entry, so the log, the page and the metrics show the same figures and nothing judges again.
The exporter and bench complete an operation alike (`completed`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
from collections.abc import Callable, Sequence

from ..model.context import OperationContext, write_rate
from ..model.operation import FinishedOperation
from ..model.samples import HostSample
from ..model.trace import Point, Trace, from_json
from ..store.oplog import OperationsLog
from ..store.view import StateStore
from .judge import judge, reference_rate

log = logging.getLogger(__name__)

MEMORY_GAUGES = ("free", "available", "cached", "dirty", "writeback")
PRESSURE = {"psi_memory_some": "memory_some", "psi_io_some": "io_some"}


class VerdictKeeper:
    """Traces arrive on the flight recorder's thread; they are judged on the collection loop's,
    which owns the operations log."""

    def __init__(self, oplog: OperationsLog, store: StateStore, wake: Callable[[], None],
                 rate_seed: tuple[FinishedOperation, ...] = ()) -> None:
        self.oplog = oplog
        self.rate_seed = rate_seed  # a bench run's creates (rate_seed.py)
        self.store = store
        self._wake = wake
        self._traced: queue.SimpleQueue[tuple[Trace, FinishedOperation]] = queue.SimpleQueue()

    def backfill(self, trace_of: Callable[[str], bytes | None]) -> None:
        """Queue the logged operations that have a kept trace but no verdict (logged by an
        exporter stopped before their trace was complete, or before verdicts existed)."""
        entries, _ = self.oplog.page(0, self.oplog.size)
        for entry in reversed(entries):
            body = trace_of(entry.id) if entry.verdict is None else None
            if body is not None:
                self._traced.put((from_json(json.loads(body)), entry))

    def traced(self, trace: Trace, record: FinishedOperation) -> None:
        """From any thread: judged in the loop's next cycle, which this wakes."""
        self._traced.put((trace, record))
        self._wake()

    def judge_traced(self) -> None:
        """Complete each operation whose trace came in, judged against the rate this host's
        storage sustained in the operations logged before it; one it cannot judge keeps its
        trace's figures and no verdict."""
        while not self._traced.empty():
            trace, record = self._traced.get_nowait()
            entries, _ = self.oplog.page(0, self.oplog.size)
            earlier = [*self.rate_seed, *(e for e in entries if e.id != record.id)]
            judged = record
            try:
                judged = with_trace_figures(record, trace)
                judged = dataclasses.replace(judged, verdict=judge(trace, judged,
                                                                   reference_rate(earlier)))
            except Exception as exc:  # noqa: BLE001 - a trace it cannot judge: no verdict
                log.error("no verdict on %s of %s/%s: %s: %s", record.operation, record.domain,
                          record.snapshot, type(exc).__name__, exc)
            else:
                slowdown = judged.verdict.slowdown
                log.info("verdict on %s of %s/%s: %s (slowdown %s)", record.operation,
                         record.domain, record.snapshot, judged.verdict.pace_setter,
                         "unknown" if slowdown is None else f"{slowdown:.2f}")
            if self.oplog.amend(judged):
                self.store.operations.amended(judged)


def _bracket(points: Sequence[Point], start: float, end: float) -> list[Point]:
    """The points within [start, end], with the one just before and the one just after."""
    before = [p for p in points if p.t < start][-1:]
    after = [p for p in points if p.t > end][:1]
    return before + [p for p in points if start <= p.t <= end] + after


def trace_context(trace: Trace, entry: FinishedOperation) -> OperationContext:
    """The exporter's host figures of an operation (OperationContext's rules) from its trace:
    host memory at its start, lowest and highest while it ran, PSI stalls, QEMU's bytes."""
    ctx = OperationContext(guest_memory_used_bytes=entry.guest_memory_used_bytes,
                           guest_memory_total_bytes=entry.guest_memory_total_bytes,
                           guest_cpu_ratio=entry.guest_cpu_ratio)
    points = _bracket(trace.points, trace.start, trace.end)
    for p in points:
        ctx.add_host(HostSample(
            p.t, {k: p.gauges[k] for k in MEMORY_GAUGES if k in p.gauges},
            pressure={name: p.counters[k] for k, name in PRESSURE.items() if k in p.counters}))
    written = [p.counters["qemu_write_bytes"] for p in points if "qemu_write_bytes" in p.counters]
    if len(written) >= 2:
        ctx.figures["qemu_written_bytes"] = int(sum(max(0.0, b - a)
                                         for a, b in zip(written, written[1:], strict=False)))
    return ctx


def with_trace_figures(entry: FinishedOperation, trace: Trace) -> FinishedOperation:
    """The entry with the host figures its trace gives (the 8 Hz samples are the finer ones);
    a figure the trace lacks keeps the collection loop's."""
    ctx = trace_context(trace, entry)
    figures = ctx.public()
    rate = write_rate(ctx.get("qemu_written_bytes"), entry.duration_seconds)
    if rate is not None:
        figures["qemu_write_rate_bytes_per_second"] = rate
    return dataclasses.replace(entry, **figures)


def completed(entry: FinishedOperation, trace: Trace,
              earlier: Sequence[FinishedOperation]) -> FinishedOperation:
    """The entry with its figures from the trace and its verdict, judged against the rate
    the earlier entries teach."""
    full = with_trace_figures(entry, trace)
    return dataclasses.replace(full, verdict=judge(trace, full, reference_rate(earlier)))
