"""What is written down about an operation: its record once finished, its progress while it
runs. Pure: the collection loop hands in the operation, its context and what it knows of the
domain."""

from __future__ import annotations

from ..model.context import OperationContext, write_rate
from ..model.operation import FinishedOperation, InFlight
from ..tracker.tracker import Operation


def finished_operation(op: Operation, ctx: OperationContext, qemu_version: str,
                       disk_cache: tuple[str, ...]) -> FinishedOperation:
    """The record of a finished operation, times rounded to the millisecond."""
    duration = op.duration or 0.0
    return FinishedOperation(
        domain=op.domain,
        snapshot=op.snapshot,
        operation=op.operation,
        kind=op.kind,
        memory=op.memory,
        depth=op.depth,
        start=round(op.start, 3),
        end=round(op.end or op.start, 3),
        duration_seconds=round(duration, 3),
        paused_seconds=round(op.paused_seconds, 3),
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
    return InFlight(op.key, op.domain, op.operation, op.start, op.start_source, op.snapshot, op.kind,
                    op.memory, op.depth, op.memory_processed_bytes, op.memory_remaining_bytes,
                    ctx.public() if ctx else {}, progress_estimate(op, ctx))
