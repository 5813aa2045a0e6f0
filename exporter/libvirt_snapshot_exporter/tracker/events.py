"""What libvirt's domain events do to a domain's tracked state: a create's guest pause, a
revert's events, an external snapshot's job, an external delete's block jobs, a save and the
restore that starts the domain from it (what each means: the tracker's docstring). Pure
functions, no I/O."""

from __future__ import annotations

from ..model.observations import (
    DETAIL_DEFINED_FROM_SNAPSHOT,
    DETAIL_RESUMED_FROM_SNAPSHOT,
    DETAIL_STARTED_FROM_SNAPSHOT,
    DETAIL_STARTED_RESTORED,
    DETAIL_STOPPED_FROM_SNAPSHOT,
    DETAIL_STOPPED_SAVED,
    DETAIL_SUSPENDED_API_ERROR,
    DETAIL_SUSPENDED_FROM_SNAPSHOT,
    EVENT_DEFINED,
    EVENT_RESUMED,
    EVENT_STARTED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    JOB_OPERATION_SAVE,
    JOB_OPERATION_SNAPSHOT,
    PAUSED_SAVE,
    PAUSED_SNAPSHOT,
    PAUSED_STARTING_UP,
    STATE_PAUSED,
    STATE_RUNNING,
    STATE_SHUTOFF,
    BlockJobEvent,
    JobCompletedEvent,
    JobProgress,
    LifecycleEvent,
)
from ..model.operation import KIND_UNKNOWN
from .domain import Operation, Start, TrackedDomain, claims_job, finish, finish_save, save_kind

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
        finished = []
        if op is not None and op.operation == "save" and op.end is not None:
            # Its restore began before a poll of the shut-off domain ended it.
            finished, op = finish_save(d), None
        start = _restore_start(d, ev.time)
        if op is None and start is not None:
            kind = d.saved_kind if d.saved_kind != KIND_UNKNOWN else save_kind(d)
            d.active = op = Operation(ev.domain, "restore", *start, kind=kind, memory=True)
            d.saved_kind = KIND_UNKNOWN
            op.paused_since = op.start  # the guest runs only once it resumes
        d.start_job = None
        return finished
    if ev.event == EVENT_STARTED:
        d.saved_at = d.start_job = None  # booted or reverted: no saved image restored
        d.saved_kind = KIND_UNKNOWN
    restore_resumed = (pair == (EVENT_RESUMED, DETAIL_RESUMED_FROM_SNAPSHOT)
                       and d.restored_at is not None)
    if restore_resumed and op is not None and op.operation == "restore":
        return _restored(d, ev.time)
    if pair in REVERT_EVENTS and not restore_resumed:
        if op is None or op.operation != "revert":
            if op is not None and claims_job(op):
                d.active = op = None  # a job taken for a delete: this revert's
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
        if op is not None and op.operation == "save" and op.end is None:
            # A save that failed after it paused the guest: libvirt resumes it (9.0 and 11.3:
            # 0.4-0.7 ms before the call returns, a save to a directory that does not exist)
            d.paused_since = None
            return finish(d, ev.time, "event", 0.0, "failure", "the guest resumed: not saved")
        if op is not None and op.paused_since is not None:
            op.paused_seconds += ev.time - op.paused_since
            op.paused_since = None
            op.resumed_at = ev.time
        elif d.paused_since is not None and d.suspend_at is not None:
            d.pause_before_active = ev.time - d.paused_since
            d.resume_at = ev.time
        d.paused_since = None
    elif ev.event == EVENT_STOPPED:
        d.restored_at = d.start_job = None
        d.managed_save = None  # a poll of the shut-off domain tells anew
        if ev.detail == DETAIL_STOPPED_SAVED:
            _saved(d, ev)
            return []
        if op is not None and op.operation == "restore":
            return finish(d, ev.time, "event", 0.0, "failure", "domain stopped during the restore")
        if op is None or op.operation != "create":
            return []
        # Not necessarily a failure: virsh destroy waits for the create's job, which may
        # finish (libvirt 9.0: SUSPENDED/API_ERROR, the file written, STOPPED 13 ms later), and
        # the file event can reach us after this one. The next poll's list says which; a
        # failure ended here.
        op.failed_at = op.failed_at or ev.time
    return []


def _saved(d: TrackedDomain, ev: LifecycleEvent) -> None:
    """STOPPED/SAVED: the save's end (before its call returns; measured). Its kind comes from
    the poll this event brings: a managed save leaves its image, a save to a file none."""
    op = d.active
    if op is None:
        # Neither its status save nor its JOB_COMPLETED seen (no watch, and the exporter
        # started during it or lost the event): it began at its pause, if that was seen;
        # nothing bounds a start no poll and no event saw (none logged then).
        start = (d.suspend_at, "event", 0.0) if d.suspend_at is not None else _unseen(d, ev.time)
        if start is None:
            d.paused_since = d.suspend_at = None
            return
        d.active = op = Operation(ev.domain, "save", *start, kind=KIND_UNKNOWN, memory=True)
        op.paused_since = d.paused_since
    if op.operation != "save":
        return
    op.end, op.end_source = ev.time, "event"
    d.saved_at = op.start
    d.paused_since = d.suspend_at = None  # stopped now, no longer paused


def _restored(d: TrackedDomain, at: float) -> list[Operation]:
    """RESUMED after STARTED/RESTORED: the guest runs again, down since its save began (when
    the exporter saw that save). The restore's job ends 0-53 ms later (libvirt 9.0; a managed
    save's image is removed meanwhile): its end is the status save without it, which may
    also come first by a millisecond; the poll ends it at the resume without the watch."""
    op = d.active
    assert op is not None
    op.resumed_at = at
    op.paused_seconds, op.paused_since = at - op.start, None
    if d.saved_at is not None and d.saved_at <= op.start:
        op.down_seconds = at - d.saved_at
    d.saved_at = None
    if op.end is not None:
        return finish(d, max(op.end, at), op.end_source, 0.0, "success")
    return []


def _restore_start(d: TrackedDomain, at: float) -> Start | None:
    """A restore began with its start job (the status XML's, or controlInfo's where a poll
    caught it), else with any job a poll caught, else after the last poll."""
    if d.start_job is not None and d.start_job[0] <= at:
        return d.start_job
    if d.job_start is not None and d.job_start <= at:
        return d.job_start, "control", 0.0
    return _unseen(d, at)


def _unseen(d: TrackedDomain, at: float) -> Start | None:
    """A start no event saw: after the last poll, if that poll found the domain idle (running,
    shut off, paused by its user). None where it found it in a job already (paused for it,
    or 11.3's SHUTDOWN state as a save stops it) or there was none (the exporter started
    during it): nothing bounds it."""
    idle = d.state in (STATE_RUNNING, STATE_SHUTOFF) or (
        d.state == STATE_PAUSED and d.reason not in (PAUSED_SAVE, PAUSED_SNAPSHOT, PAUSED_STARTING_UP))
    if d.last_poll is None or d.last_poll > at or not idle:
        return None
    return d.last_poll, "poll", at - d.last_poll


def _job_completed(d: TrackedDomain, ev: JobCompletedEvent) -> None:
    operation = ev.params.get("operation")
    if operation == JOB_OPERATION_SAVE:
        _save_completed(d, ev)
        return
    if operation != JOB_OPERATION_SNAPSHOT:
        return  # dump, migration...
    elapsed = ev.params.get("time_elapsed")
    op = d.active
    if op is not None and op.operation == "create":
        op.job = dict(ev.params)
        if elapsed is not None and op.start_source not in ("control",):
            op.start, op.start_source, op.start_uncertainty = (
                ev.time - elapsed / 1000.0, "job_completed", 0.0
            )


def _save_completed(d: TrackedDomain, ev: JobCompletedEvent) -> None:
    """A save's guest memory is written (virsh save, managed save): the first sign that tells
    it from a snapshot's pause; time_elapsed gives its start. The domain stops after it."""
    op = d.active
    if op is not None and op.operation == "save":
        op.job = dict(ev.params)  # begun at its status save: libvirt's figures of its memory
        return
    if not claims_job(op):
        return
    elapsed = ev.params.get("time_elapsed")
    start: Start | None = (
        (ev.time - elapsed / 1000.0, "job_completed", 0.0) if elapsed is not None
        else (d.suspend_at, "event", 0.0) if d.suspend_at is not None
        else _unseen(d, ev.time)
    )
    if start is None:
        return
    d.active = op = Operation(ev.domain, "save", *start, kind=KIND_UNKNOWN, memory=True)
    op.job = dict(ev.params)
    op.paused_since = d.paused_since
    d.suspend_at = None
