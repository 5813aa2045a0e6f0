"""What libvirt's snapshot metadata files and the domain's status saves say about operations
(both from metadata_watch). Pure functions over a domain's tracked state; the only code that
reads or writes its files and status saves. Also when an operation began where no event and no
poll saw it begin: the best of its job's exact start (controlInfo), its first status save, its
snapshot's creationTime and the poll bracket.

Measured on libvirt 9.0 and 11.3: a create's file appearing, a revert's rewritten current flags
and a delete's file removed are each exact ends (within ~5 ms before the API call returns); the
status XML is saved as a running domain's job begins, and again as it ends (11.3 also mid-job).
"""

from __future__ import annotations

from ..model.observations import (
    DomainPoll,
    DomainStatusSaved,
    ManagedSaveImage,
    SnapshotFileEvent,
    SnapshotRecord,
)
from ..model.operation import KIND_UNKNOWN
from .domain import Operation, Start, TrackedDomain, claims_job, finish, finish_save

FILE_GRACE = 0.5  # seconds a poll ahead of the file events waits for them (they take ms)
FILE_MEMORY = 10.0  # seconds file and status events are kept for the polls that explain them
CLOSING_SAVE = 0.01  # a job's closing status save follows its file event by 1-3 ms (libvirt 9.0)
POLL_SLACK = 0.25  # a poll is stamped when read, up to this long after libvirt answered it
STATUS_LAG = 0.005  # the status XML is saved 2-4 ms after a snapshot call begins (9.0 and 11.3)


FileEvent = SnapshotFileEvent | DomainStatusSaved | ManagedSaveImage


def take_file_event(d: TrackedDomain, ev: FileEvent) -> list[Operation]:
    """Kept for the poll that finds the operation; an operation in flight takes its end."""
    if isinstance(ev, DomainStatusSaved):
        return _status_saved(d, ev)
    if isinstance(ev, ManagedSaveImage):
        if d.active is not None and d.active.operation == "save":
            d.active.kind = "managed"  # its image, begun after its status save (same thread)
        return []
    created = d.files.get(ev.snapshot, (0.0, ""))
    d.files[ev.snapshot] = (ev.time, ev.change)
    op = d.active
    if (ev.change == "removed" and created[1] == "created" and ev.snapshot not in d.snapshots
            and (op is None or op.snapshot != ev.snapshot)):
        return _unpolled_pair(d, ev.domain, ev.snapshot, created[0], ev.time)
    if op is None or ev.time < op.start:
        return []
    if op.operation == "create" and op.snapshot == ev.snapshot and ev.change != "removed":
        op.end, op.end_source = ev.time, "metadata"
    elif op.operation == "revert" and ev.change == "rewritten":
        # The old and the new current snapshot's files are rewritten at the revert's end;
        # it is closed by DEFINED/FROM_SNAPSHOT or the settle time as before, since libvirt
        # sends the revert's last events after that.
        op.rewritten_at = ev.time
    return []


def _status_saved(d: TrackedDomain, ev: DomainStatusSaved) -> list[Operation]:
    """The async job a status save names: a save's start as libvirt began its job (also of a
    job a poll caught first), a start of the shut-off domain beginning (a restore's, if
    STARTED/RESTORED follows), a save's end once its job is gone, and a restore's."""
    d.status_saved.append(ev.time)
    finished = _save_over(d, ev) if ev.job != "save" else []
    op = d.active
    began = ((ev.job_started, "status", 0.0) if ev.job_started is not None
             else saved_start(ev.time))
    # Not the job of the operation in flight, nor of one that ended (11.3 saves it again
    # just before a save's STOPPED).
    new_job = claims_job(op) and (d.last_end is None or began[0] >= d.last_end)
    if new_job and ev.job == "save":
        d.active = Operation(ev.domain, "save", *began, kind=KIND_UNKNOWN, memory=True)
        d.active.paused_since = d.paused_since
    elif new_job and op is None and ev.job == "start" and d.start_job is None:
        d.start_job = began  # a start (or 9.0's revert) began: a restore's if STARTED/RESTORED
    elif not ev.job and op is not None and op.operation == "restore" and op.end is None:
        op.end, op.end_source = ev.time, "status"
        if op.resumed_at is not None:
            finished += finish(d, max(op.end, op.resumed_at), "status", 0.0, "success")
    return finished


def _save_over(d: TrackedDomain, ev: DomainStatusSaved) -> list[Operation]:
    """A status save naming no save job while one is in flight: it stopped the domain (its
    restore begins before a poll of the shut-off domain ended it), or it failed without
    resuming the guest (9.0 and 11.3: a save of a guest its user paused, refused 1.6-2.1 ms
    into its job, the guest still paused; a running guest's is resumed first, which ends it)."""
    op = d.active
    if op is None or op.operation != "save":
        return []
    if op.end is not None:
        return finish_save(d)
    return finish(d, ev.time, "status", 0.0, "failure", "not saved: its job ended")


def _unpolled_pair(d: TrackedDomain, domain: str, name: str, created: float,
                   removed: float) -> list[Operation]:
    """A snapshot created and deleted between two polls (a disk-only create and its delete
    1 ms later take 50 ms together, measured on 11.3): both from the files. No poll listed
    it, so its kind comes from the delete's block job (an external delete commits) and it
    had no memory (a memory snapshot lasts long enough to be polled)."""
    op = d.active
    if op is not None:
        return []
    lo = max(d.last_poll or created, _after_last_end(d))
    saves = sorted(t for t in d.status_saved if lo <= t <= removed)
    kind = "external" if d.block_job_start is not None else "internal"
    ops = []
    for operation, after, end in (("create", lo, created), ("delete", created, removed)):
        starts = [t for t in saves if after + (CLOSING_SAVE if operation == "delete" else 0)
                  <= t < end]
        if starts:
            start, source, unc = saved_start(starts[0])
        else:
            start, source, unc = after, "poll", end - after
        d.active = Operation(domain, operation, start, source, unc, snapshot=name, kind=kind)
        d.active.end, d.active.end_source = end, "metadata"
        ops += finish(d, end, "metadata", 0.0, "success")
    d.failed.add(name)  # a poll answered before it went must not count it again
    return ops


def ahead_of_files(d: TrackedDomain, before: dict[str, SnapshotRecord],
                   now: dict[str, SnapshotRecord]) -> bool:
    """A snapshot gone, or a create done, without the file event that ends it."""
    op = d.active
    creating = op.snapshot if op is not None and op.operation == "create" else None
    change = {name: d.files.get(name, (0.0, ""))[1] for name in set(before) | set(now)}
    # Also the snapshot of a create in flight: it went either because the create failed
    # (no file ever: this waits FILE_GRACE) or because a delete took it (its file removed).
    deleted = [n for n in before if n not in now and n not in d.failed]
    created = [n for n, s in now.items() if s.current and (n not in before or n == creating)]
    return (any(change[n] != "removed" for n in deleted)
            or any(change[n] not in ("created", "rewritten") for n in created))


def file_written(d: TrackedDomain, snapshot: str) -> float | None:
    """When the snapshot's file was last created or rewritten, if it was and is still there."""
    when, change = d.files.get(snapshot, (None, "removed"))
    return when if change != "removed" else None


def file_removed(d: TrackedDomain, snapshot: str) -> float | None:
    """When the snapshot's file was removed, if it was."""
    when, change = d.files.get(snapshot, (None, ""))
    return when if change == "removed" else None


def last_rewrite(d: TrackedDomain, since: float) -> float | None:
    """The latest rewrite of any snapshot's file since then: a revert's current flags."""
    rewritten = [t for t, change in d.files.values() if change == "rewritten" and t >= since]
    return max(rewritten) if rewritten else None


def end_at_removal(d: TrackedDomain, op: Operation) -> None:
    """A delete ends when libvirt removes the snapshot's file (exact, also for an external
    delete, whose block job ends before it)."""
    when, change = d.files.pop(op.snapshot, (None, ""))
    if change == "removed" and when is not None and when >= op.start:
        op.end, op.end_source, op.end_uncertainty = when, "metadata", 0.0


def create_saved_start(d: TrackedDomain, creation_time: float, before: float) -> Start | None:
    """The first status XML save of the create's job, after whatever ran before it."""
    after = max(creation_time, _after_last_end(d))
    saves = [t for t in d.status_saved if after <= t <= before]
    return saved_start(min(saves)) if saves else None


def unseen_saved_start(d: TrackedDomain, last_poll: float, end: float) -> Start | None:
    """The status XML saved as the job of an operation first noticed after it ended began: the
    first save after whatever ran before (libvirt 11.3 saves again mid-job and just before the
    end) and not before the last poll (a job it would have seen), give or take the time an
    answer waits."""
    after = max(last_poll - POLL_SLACK, _after_last_end(d))
    saves = [t for t in d.status_saved if after < t < end]
    return saved_start(min(saves)) if saves else None


def forget_old_files(d: TrackedDomain, p: DomainPoll) -> None:
    """Past FILE_MEMORY no poll is still to explain a file event or a status save."""
    d.files = {k: v for k, v in d.files.items() if v[0] > p.time - FILE_MEMORY}
    d.status_saved = [t for t in d.status_saved if t > p.time - FILE_MEMORY]


def saved_start(saved: float) -> Start:
    return saved - STATUS_LAG, "status", STATUS_LAG


def _after_last_end(d: TrackedDomain) -> float:
    """Status saves after this can be the next job's; the last one's closing save is not."""
    return d.last_end + CLOSING_SAVE if d.last_end is not None else -1e18


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
    if d.last_end is not None and d.last_end > last:
        # After the operation that ended since that poll (one domain's snapshot operations
        # run one at a time): a delete 33 ms after a disk-only create the same poll found
        # otherwise began "before" it.
        last = d.last_end
    if end is not None:
        saved = unseen_saved_start(d, last, end)
        if saved is not None:
            return saved
        return last, "poll", max(0.0, end - last)
    return last, "poll", p.time - last
