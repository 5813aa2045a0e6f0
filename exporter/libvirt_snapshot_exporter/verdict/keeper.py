"""The one place an operation is judged: once its trace is complete (3 s after its end), its
host figures are read again from the trace and its verdict given, and both are kept in its log
entry, so the log, the page and the metrics show the same figures and nothing judges again.
The exporter and bench complete an operation alike (`completed`).
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Callable, Sequence

from ..model.context import OperationContext, write_rate
from ..model.operation import FinishedOperation
from ..model.printable import printable
from ..model.samples import HostSample
from ..model.trace import PSI, Point, Trace, counter_growth
from ..store.oplog import OperationsLog
from ..store.trace_store import logged_trace
from ..store.view import StateStore
from .judge import judge, reference

log = logging.getLogger(__name__)


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
        """Queue the logged operations whose kept trace was not judged as this exporter judges:
        no verdict (logged by an exporter stopped before their trace was complete, or before
        verdicts existed), a verdict from before models per operation (a revert judged by
        bytes written read '23.5x slower'), or a failure given a pace."""
        entries, _ = self.oplog.page(0, self.oplog.size)
        for entry in reversed(entries):
            if entry.outcome == "success":
                stale = entry.verdict is None or entry.verdict.model is None
            else:
                stale = entry.verdict is not None
            body = trace_of(entry.id) if stale else None
            if body is None:
                continue
            try:
                trace = logged_trace(entry, body)
            except (ValueError, RecursionError) as exc:
                log.warning("trace %s not judged: %s", entry.id, str(exc)[:200])
                continue
            self._traced.put((trace, entry))

    def traced(self, trace: Trace, record: FinishedOperation) -> None:
        """From any thread: judged in the loop's next cycle, which this wakes."""
        self._traced.put((trace, record))
        self._wake()

    def judge_traced(self) -> None:
        """Complete each operation whose trace came in, judged against what its storage did in
        the operations logged before it; one it cannot judge, or that failed (its error says
        why), keeps its trace's figures and no verdict."""
        while not self._traced.empty():
            trace, record = self._traced.get_nowait()
            entries, _ = self.oplog.page(0, self.oplog.size)
            earlier = [*self.rate_seed, *(e for e in entries if e.id != record.id)]
            judged = record
            names = printable(record.domain), printable(record.snapshot)
            try:
                # checked: what the log keeps must read back, every figure finite
                judged = with_trace_figures(record, trace).checked()
                judged = with_verdict(judged, trace, earlier).checked()
            except Exception as exc:  # noqa: BLE001 - a trace it cannot judge: no verdict
                log.error("no verdict on %s of %s/%s: %s: %s", record.operation, *names,
                          type(exc).__name__, exc)
            else:
                log.info("verdict on %s of %s/%s: %s", record.operation, *names,
                         "none (it failed)" if judged.verdict is None else judged.verdict.short())
            if self.oplog.amend(judged):
                self.store.operations.amended(judged)


def _bracket(points: Sequence[Point], start: float, end: float) -> list[Point]:
    """The points within [start, end], with the one just before and the one just after."""
    before = [p for p in points if p.t < start][-1:]
    after = [p for p in points if p.t > end][:1]
    return before + [p for p in points if start <= p.t <= end] + after


def trace_context(trace: Trace) -> OperationContext:
    """The exporter's host figures of an operation (OperationContext's rules) from its trace:
    host memory at its start, lowest and highest while it ran, PSI stalls, QEMU's bytes."""
    ctx = OperationContext()
    points = _bracket(trace.points, trace.start, trace.end)
    for p in points:
        ctx.add_host(HostSample(p.t, dict(p.gauges), pressure={
            name.removeprefix(PSI): v for name, v in p.counters.items() if name.startswith(PSI)}))
    written = counter_growth(points, "qemu_write_bytes")
    if written is not None:
        ctx.figures["qemu_written_bytes"] = int(written)
    return ctx


def with_trace_figures(entry: FinishedOperation, trace: Trace) -> FinishedOperation:
    """The entry with the host figures its trace gives (the 8 Hz samples are the finer ones)
    and the storage its disks live on; a figure the trace lacks keeps the collection loop's."""
    ctx = trace_context(trace)
    figures = ctx.public()
    if trace.storage:
        figures["storage"] = trace.storage
    rate = write_rate(ctx.get("qemu_written_bytes"), entry.duration_seconds)
    if rate is not None:
        figures["qemu_write_rate_bytes_per_second"] = rate
    return dataclasses.replace(entry, **figures)


def with_verdict(entry: FinishedOperation, trace: Trace,
                 earlier: Sequence[FinishedOperation]) -> FinishedOperation:
    """The entry with its verdict, judged against what the earlier entries teach of its
    storage; a failed operation gets none (its error says why it ended)."""
    if entry.outcome != "success":
        return dataclasses.replace(entry, verdict=None)
    return dataclasses.replace(entry, verdict=judge(trace, entry, reference(earlier, entry)))


def completed(entry: FinishedOperation, trace: Trace,
              earlier: Sequence[FinishedOperation]) -> FinishedOperation:
    """The entry with its figures from the trace and its verdict (bench's way; the exporter's
    keeps the figures when judging fails)."""
    return with_verdict(with_trace_figures(entry, trace), trace, earlier)
