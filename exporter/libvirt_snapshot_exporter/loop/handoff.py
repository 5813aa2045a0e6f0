"""What becomes of each operation the tracker reports: when it begins, its host context and its
trace start (from the samples just before its real start); when it ends, its record goes to
the operations log, the store's histograms and the flight recorder, whose trace goes on for its
after part. What is written down about an operation (its record once finished, its progress
while it runs) is built here from the tracker's operation and its context, purely.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from ..model.context import OperationContext, write_rate
from ..model.operation import FinishedOperation, InFlight, OperationFacts
from ..model.printable import printable
from ..store.oplog import OperationsLog
from ..store.view import StateStore
from ..tracker.tracker import Operation
from .context_keeper import ContextKeeper
from .domain_cache import DomainCache

if TYPE_CHECKING:
    from ..verdict.recorder import FlightRecorder

log = logging.getLogger(__name__)


class OperationHandoff:
    def __init__(self, contexts: ContextKeeper, oplog: OperationsLog, store: StateStore,
                 recorder: FlightRecorder | None) -> None:
        self.contexts = contexts
        self.oplog = oplog
        self.store = store
        self.recorder = recorder  # None: trace.operations is 0

    def begun(self, op: Operation, cache: DomainCache) -> None:
        """The guest's memory and CPU as they were when it began: the study's columns."""
        used, total = cache.guest_memory()
        self.contexts.begin(op.id, op.domain, op.start, used, total, cache.cpu_ratio)
        if self.recorder is not None:
            self.recorder.begin(op.id, op.domain, op.start, cache.pid, cache.disk_sources())

    def finished(self, op: Operation, cache: DomainCache, qemu_version: str) -> None:
        record = finished_operation(op, self.contexts.finish(op.id), qemu_version,
                                    cache.disk_cache_modes(),
                                    cache.openstack.name if cache.openstack else None)
        log.info("%s %s of %s/%s: %.3f s (%s, start by %s, end by %s)", op.outcome,
                 op.operation, printable(op.domain), printable(op.snapshot),
                 record.duration_seconds, op.kind, op.start_source, op.end_source)
        self.oplog.add(record)
        self.store.operations.record(record)
        if self.recorder is not None:
            self.recorder.end(op.id, record)


def finished_operation(op: Operation, ctx: OperationContext, qemu_version: str,
                       disk_cache: tuple[str, ...],
                       instance_name: str | None = None) -> FinishedOperation:
    """The record of a finished operation, times rounded to the millisecond."""
    duration = op.duration or 0.0
    return FinishedOperation(
        id=op.id,
        domain=op.domain,
        instance_name=instance_name,
        snapshot=op.snapshot,
        operation=op.operation,
        kind=op.kind,
        memory=op.memory,
        depth=op.depth,
        start=round(op.start, 3),
        end=round(op.end or op.start, 3),
        duration_seconds=round(duration, 3),
        paused_seconds=round(op.paused_seconds, 3),
        down_seconds=None if op.down_seconds is None else round(op.down_seconds, 3),
        outcome=op.outcome,
        error=op.error,
        start_source=op.start_source,
        end_source=op.end_source,
        uncertainty_seconds=round(op.start_uncertainty + op.end_uncertainty, 3),
        qemu_version=qemu_version,
        disk_cache=disk_cache,
        job_time_elapsed_ms=op.job.get("time_elapsed"),
        job_downtime_ms=op.job.get("downtime"),
        job_memory_processed_bytes=op.job.get("memory_processed", op.memory_processed_bytes),
        **ctx.public(),
        qemu_write_rate_bytes_per_second=write_rate(ctx.get("qemu_written_bytes"), duration),
    )


def progress_estimate(op: Operation, ctx: OperationContext | None) -> float | None:
    """How far an internal memory create is: QEMU writes the guest's used memory once, so the
    bytes it wrote so far over that. None for everything else (no measure of its work)."""
    if (ctx is None or op.operation != "create" or op.kind != "internal" or not op.memory
            or ctx.get("qemu_written_bytes") is None or not ctx.get("guest_memory_used_bytes")):
        return None
    return min(1.0, ctx.get("qemu_written_bytes") / ctx.get("guest_memory_used_bytes"))


def in_flight(op: Operation, ctx: OperationContext | None) -> InFlight:
    """An operation in flight as the view publishes it."""
    facts = OperationFacts(**{f.name: getattr(op, f.name) for f in dataclasses.fields(OperationFacts)})
    return InFlight(op.id, facts, ctx.public() if ctx else {}, progress_estimate(op, ctx))
