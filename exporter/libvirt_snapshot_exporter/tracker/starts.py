"""When an operation began, where no event and no poll saw it begin: the best of its job's
exact start (controlInfo), its first status save, its snapshot's creationTime and the poll
bracket. Pure functions over a domain's tracked state."""

from __future__ import annotations

from ..model.observations import DomainPoll, SnapshotRecord
from .domain import Start, TrackedDomain
from .files import create_saved_start, file_written, unseen_saved_start


def create_start(d: TrackedDomain, p: DomainPoll, snap: SnapshotRecord) -> Start:
    """Start of the create of a snapshot first listed by poll p. A job that began after the
    snapshot's file was written is kept for the next operation (d.next_job_start)."""
    written = file_written(d, snap.name)
    if written is None:
        written = p.time
    if d.job_start is not None and d.job_start >= snap.creation_time - 1.0:
        if d.job_start < written:
            return d.job_start, "control", 0.0
        # A job begun after the snapshot's file was written: the next operation's (a
        # delete 1 ms after a disk-only create, measured), kept for it.
        d.next_job_start = d.job_start
    if d.suspend_at is not None and d.suspend_at >= snap.creation_time - 0.01:
        return d.suspend_at, "event", 0.0
    # creationTime is whole seconds, stamped as the create call began: intersect
    # [creationTime, creationTime + 1) with the time since the previous poll, and with
    # the time before its file appeared.
    lo = max(snap.creation_time, d.last_poll if d.last_poll is not None else -1e18)
    hi = min(snap.creation_time + 1.0, p.time, written)
    saved = create_saved_start(d, snap.creation_time, hi)
    if saved is not None:
        return saved
    if lo > hi:
        lo = hi = min(snap.creation_time + 0.5, p.time)
    return (lo + hi) / 2, "creation_time", (hi - lo) / 2


def unseen_start(d: TrackedDomain, p: DomainPoll, end: float | None = None) -> Start:
    """Start of an operation first noticed after it ended (at end, when a file said so)."""
    if d.job_start is not None:
        return d.job_start, "control", 0.0
    if d.block_job_start is not None:
        return d.block_job_start, "event", 0.0
    last = d.last_poll if d.last_poll is not None else p.time
    if end is not None:
        saved = unseen_saved_start(d, last, end)
        if saved is not None:
            return saved
        return last, "poll", max(0.0, end - last)
    return last, "poll", p.time - last
