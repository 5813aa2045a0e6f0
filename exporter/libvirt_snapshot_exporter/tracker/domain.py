"""What the tracker keeps: operations, what it remembers of each domain between observations,
and how the operation in flight is closed (which resets that memory). Pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..model.observations import DomainPoll, SnapshotRecord
from ..model.operation import KIND_UNKNOWN, OperationFacts, new_operation_id

Start = tuple[float, str, float]  # an operation's start, start_source, start_uncertainty


@dataclass
class Operation(OperationFacts):
    """One operation (a snapshot's create, delete or revert; a save or a restore), in flight
    (end is None) or finished."""

    end: float | None = None
    end_source: str = ""
    end_uncertainty: float = 0.0
    outcome: str = ""  # success | failure, once finished
    error: str = ""
    paused_seconds: float = 0.0
    down_seconds: float | None = None  # a restore's: the guest stopped since its save began
    job: dict[str, Any] = field(default_factory=dict)
    # internal bookkeeping while in flight
    paused_since: float | None = None
    resumed_at: float | None = None
    failed_at: float | None = None  # SUSPENDED/API_ERROR: the create call failed here
    idle_since: float | None = None
    rewritten_at: float | None = None  # a revert's snapshot files rewritten: its end
    defined_at: float | None = None  # a revert's DEFINED/FROM_SNAPSHOT, its last event
    id: str = field(default_factory=new_operation_id)  # the operation's one id, log and URL

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)


@dataclass
class TrackedDomain:
    """What the tracker remembers about one domain between observations."""

    snapshots: dict[str, SnapshotRecord] = field(default_factory=dict)
    current: str | None = None  # last non-empty current snapshot
    last_poll: float | None = None
    active: Operation | None = None
    paused_since: float | None = None
    suspend_at: float | None = None  # a SUSPENDED event no operation has claimed yet
    pause_before_active: float = 0.0
    resume_at: float | None = None
    job_start: float | None = None  # exact start of an async job seen in controlInfo()
    next_job_start: float | None = None  # a job begun after the active create's guest resumed
    block_job_start: float | None = None
    block_job_end: float | None = None
    revert_event: float | None = None
    revert_defined_at: float | None = None
    restored_at: float | None = None  # STARTED/RESTORED: started from a saved image, no revert
    # a poll of the domain shut off since it last stopped found a managed save image (True) or
    # none (False); None before such a poll
    managed_save: bool | None = None
    saved_at: float | None = None  # start of the save that stopped the domain: its down time
    saved_kind: str = KIND_UNKNOWN  # of the save that stopped the domain: its restore's
    start_job: Start | None = None  # a start of the domain began (status XML, controlInfo)
    defined_due: float | None = None  # end of a revert finished before its DEFINED event came
    state: int = 0
    reason: int = 0  # of the state, as the last poll read them
    failed: set[str] = field(default_factory=set)  # snapshots of failed creates, still listed
    files: dict[str, tuple[float, str]] = field(default_factory=dict)  # snapshot -> last change
    status_saved: list[float] = field(default_factory=list)  # recent status XML saves
    last_end: float | None = None  # end of the last operation finished here
    ahead_since: float | None = None  # polls have shown an end whose file event is still due
    held: DomainPoll | None = None  # the latest such poll, applied once its file event comes


def save_kind(d: TrackedDomain) -> str:
    """A save's kind where its image was not seen created, and a restore's: a managed save
    leaves the shut-off domain a managed save image, a save to a file none. KIND_UNKNOWN
    where no poll saw the domain shut off before its restore began."""
    if d.managed_save is None:
        return KIND_UNKNOWN
    return "managed" if d.managed_save else "file"


def claims_job(op: Operation | None) -> bool:
    """No operation in flight, or a job taken for a delete before any snapshot went: what
    names the job (a revert's events, a save's status save or JOB_COMPLETED) takes it."""
    return op is None or (op.operation == "delete" and not op.snapshot)


def finish_save(d: TrackedDomain) -> list[Operation]:
    """Close the save in flight, a success, at its STOPPED/SAVED; of the kind known by now,
    which its restore takes."""
    op = d.active
    assert op is not None and op.operation == "save" and op.end is not None
    if op.kind == KIND_UNKNOWN:
        op.kind = save_kind(d)
    d.saved_kind = op.kind
    return finish(d, op.end, op.end_source, 0.0, "success")


def finish_polled(d: TrackedDomain, p: DomainPoll, outcome: str, error: str = "") -> list[Operation]:
    """Close the operation in flight that poll p found finished, at the best end known."""
    op = d.active
    assert op is not None
    if op.end is not None:  # an event already gave the end
        return finish(d, op.end, op.end_source, op.end_uncertainty, outcome, error)
    if outcome == "failure" and op.failed_at is not None:
        return finish(d, op.failed_at, "event", 0.0, outcome, error)
    if op.resumed_at is not None and op.resumed_at >= op.start:
        return finish(d, op.resumed_at, "event", 0.0, outcome, error)
    last = d.last_poll if d.last_poll is not None and d.last_poll >= op.start else op.start
    # Ended after the last poll that saw it running and before this one.
    return finish(d, (last + p.time) / 2, "poll", (p.time - last) / 2, outcome, error)


def finish(d: TrackedDomain, end: float, source: str, uncertainty: float, outcome: str,
           error: str = "") -> list[Operation]:
    """Close the operation in flight and forget what the domain kept for it."""
    op = d.active
    assert op is not None
    if op.paused_since is not None:
        op.paused_seconds += max(0.0, end - op.paused_since)
    done = replace(
        op, end=max(end, op.start), end_source=source, end_uncertainty=uncertainty,
        outcome=outcome, error=error, paused_since=None,
    )
    if op.operation == "create" and outcome == "failure":
        # Its snapshot is being removed: its disappearance is no delete, and a sighting
        # of it before it goes is no new create.
        d.snapshots.pop(op.snapshot, None)
        d.failed.add(op.snapshot)
    d.active = None
    d.last_end = done.end
    d.defined_due = done.end if op.operation == "revert" and op.defined_at is None else None
    d.job_start, d.next_job_start = d.next_job_start, None
    d.block_job_start = d.block_job_end = None
    d.suspend_at = d.resume_at = d.revert_event = None
    d.pause_before_active = 0.0
    return [done]
