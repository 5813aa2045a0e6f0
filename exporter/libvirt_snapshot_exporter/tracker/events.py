"""What libvirt's domain events do to a domain's tracked state: a create's guest pause, a
revert's events, an external snapshot's job, an external delete's block jobs (what each means:
the tracker's docstring). Pure functions, no I/O."""

from __future__ import annotations

from ..model.observations import (
    DETAIL_DEFINED_FROM_SNAPSHOT,
    DETAIL_RESUMED_FROM_SNAPSHOT,
    DETAIL_STARTED_FROM_SNAPSHOT,
    DETAIL_STARTED_RESTORED,
    DETAIL_STOPPED_FROM_SNAPSHOT,
    DETAIL_SUSPENDED_API_ERROR,
    DETAIL_SUSPENDED_FROM_SNAPSHOT,
    EVENT_DEFINED,
    EVENT_RESUMED,
    EVENT_STARTED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    JOB_OPERATION_SNAPSHOT,
    BlockJobEvent,
    JobCompletedEvent,
    JobProgress,
    LifecycleEvent,
)
from .domain import Operation, TrackedDomain, finish

REVERT_SETTLE = 2.0  # seconds a revert may look finished before its last event is given up on
REVERT_EVENTS = {
    (EVENT_SUSPENDED, DETAIL_SUSPENDED_FROM_SNAPSHOT),
    (EVENT_STOPPED, DETAIL_STOPPED_FROM_SNAPSHOT),
    (EVENT_STARTED, DETAIL_STARTED_FROM_SNAPSHOT),
    (EVENT_RESUMED, DETAIL_RESUMED_FROM_SNAPSHOT),
}

DomainEvent = LifecycleEvent | JobCompletedEvent | BlockJobEvent | JobProgress


def take_event(d: TrackedDomain, ev: DomainEvent) -> list[Operation]:
    """Events mark what polls cannot see (a pause, a revert) or see late; returns the operations
    an event finished."""
    if isinstance(ev, LifecycleEvent):
        return _lifecycle(d, ev)
    if isinstance(ev, JobCompletedEvent):
        _job_completed(d, ev)
    elif isinstance(ev, BlockJobEvent):
        if d.block_job_start is None:
            d.block_job_start = ev.time
        d.block_job_end = ev.time
    elif isinstance(ev, JobProgress) and d.active is not None:
        d.active.memory_processed_bytes = ev.processed_bytes
        d.active.memory_remaining_bytes = ev.remaining_bytes
    return []


def _lifecycle(d: TrackedDomain, ev: LifecycleEvent) -> list[Operation]:
    pair = (ev.event, ev.detail)
    op = d.active
    if pair == (EVENT_STARTED, DETAIL_STARTED_RESTORED):
        # A start from a saved image (restore, managed save): libvirt sends its resume as
        # RESUMED/FROM_SNAPSHOT, as it does a revert's (it maps RUNNING_RESTORED so).
        d.restored_at = ev.time
        return []
    restore_resumed = (pair == (EVENT_RESUMED, DETAIL_RESUMED_FROM_SNAPSHOT)
                       and d.restored_at is not None)
    if pair in REVERT_EVENTS and not restore_resumed:
        if op is None or op.operation != "revert":
            if op is not None and op.operation == "delete" and not op.snapshot:
                # A job taken for a delete before anything went: it was this revert's.
                d.active = op = None
            finished = finish(d, ev.time, "event", 0.0, "success") if op else []
            d.active = Operation(ev.domain, "revert", ev.time, "event", 0.0)
            d.revert_event = ev.time
            return finished
        return []
    if pair == (EVENT_DEFINED, DETAIL_DEFINED_FROM_SNAPSHOT):
        # The last event of every revert, also of an offline one that had no other event.
        if op is not None and op.operation == "revert":
            op.end, op.end_source, op.defined_at = ev.time, "event", ev.time
        elif d.defined_due is not None and ev.time - d.defined_due <= REVERT_SETTLE:
            # The last event of a revert a poll already finished (its files rewritten,
            # the event 2-12 ms later, measured on 9.0 and 11.3): not a second revert.
            d.defined_due = None
        else:
            d.revert_defined_at = ev.time
        return []
    if ev.event == EVENT_SUSPENDED:
        if ev.detail == DETAIL_SUSPENDED_API_ERROR and op is not None and op.operation == "create":
            op.failed_at = op.failed_at or ev.time
        # A second SUSPENDED (an API error while paused) does not restart the pause.
        d.paused_since = d.paused_since or ev.time
        if op is not None:
            op.paused_since = op.paused_since or ev.time
        else:
            d.suspend_at = ev.time
    elif ev.event == EVENT_RESUMED:
        if op is not None and op.paused_since is not None:
            op.paused_seconds += ev.time - op.paused_since
            op.paused_since = None
            op.resumed_at = ev.time
        elif d.paused_since is not None and d.suspend_at is not None:
            d.pause_before_active = ev.time - d.paused_since
            d.resume_at = ev.time
        d.paused_since = None
    elif ev.event == EVENT_STOPPED:
        d.restored_at = None
        if op is None or op.operation != "create":
            return []
        # Not necessarily a failure: virsh destroy waits for the create's job, which may
        # finish (libvirt 9.0: SUSPENDED/API_ERROR, the file written, STOPPED 13 ms later), and
        # the file event can reach us after this one. The next poll's list says which; a
        # failure ended here.
        op.failed_at = op.failed_at or ev.time
    return []


def _job_completed(d: TrackedDomain, ev: JobCompletedEvent) -> None:
    if ev.params.get("operation") != JOB_OPERATION_SNAPSHOT:
        return  # save, dump, migration...
    elapsed = ev.params.get("time_elapsed")
    op = d.active
    if op is not None and op.operation == "create":
        op.job = dict(ev.params)
        if elapsed is not None and op.start_source not in ("control",):
            op.start, op.start_source, op.start_uncertainty = (
                ev.time - elapsed / 1000.0, "job_completed", 0.0
            )
