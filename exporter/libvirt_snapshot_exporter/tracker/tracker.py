"""The operation tracker (snapshots, saves and restores): a pure state machine.

Observations go in (events and polls, each stamped with its wall-clock time), operations come
out. No I/O and no clock of its own, so it is tested by replaying sequences recorded from a
real libvirtd (tests/unit/sequences, written by scripts/record-sequences.py).

Signals and what they mean (measured on libvirt 9.0 / QEMU 7.2, see README "Precision"):
- a new snapshot in the list that is not current: a create in flight; it becomes current when the
  create succeeds and vanishes when it fails;
- controlInfo() in JOB state: an async job, with its exact start (now - stateTime);
- SUSPENDED/RESUMED lifecycle events bracket the guest pause of a create;
- *_FROM_SNAPSHOT lifecycle events mark a revert; DEFINED/FROM_SNAPSHOT is its last event;
- JOB_COMPLETED (operation 6) carries libvirt's own elapsed time for an external memory snapshot;
- a snapshot that vanishes is a delete (block-job events accompany an external one);
- libvirt's snapshot metadata files (metadata_watch): a create's file appearing, a revert's
  rewritten current flags and a delete's file removed are each exact ends; the domain's status
  XML saved as a job begins is the start of a delete no poll caught;
- a save (no snapshot operation): its status XML's `save` job, JOB_COMPLETED (operation 2) and
  STOPPED/SAVED; the restore that starts the domain from it: a `start` job, STARTED/RESTORED,
  RESUMED/FROM_SNAPSHOT (no revert) and the status saved without the job.
When a start or end was not seen directly it is bracketed by polls and the bracket is recorded
as the uncertainty.

Modules: domain.py (the operations, what is kept of each domain), events.py (the domain
events), files.py (the metadata files and status saves, and the starts no event or poll saw);
this one the polls, which find and finish operations.
"""

from __future__ import annotations

from ..model.observations import (
    CONTROL_JOB,
    PAUSED_SAVE,
    PAUSED_SNAPSHOT,
    PAUSED_STARTING_UP,
    STATE_PAUSED,
    STATE_RUNNING,
    STATE_SHUTOFF,
    DomainGone,
    DomainPoll,
    DomainUnchanged,
    MetadataWatchState,
    Observation,
    SnapshotFileEvent,
    SnapshotRecord,
    depth_of,
)
from ..model.operation import KIND_UNKNOWN
from .domain import Operation, TrackedDomain, finish, finish_polled, finish_save
from .events import REVERT_SETTLE, take_event
from .files import (
    FILE_GRACE,
    FileEvent,
    ahead_of_files,
    create_start,
    end_at_removal,
    file_removed,
    file_written,
    forget_old_files,
    last_rewrite,
    take_file_event,
    unseen_start,
)

__all__ = ["Operation", "Tracker"]

Snapshots = dict[str, SnapshotRecord]


class Tracker:
    """Turns observations into operations. observe() returns the operations it finished."""

    def __init__(self) -> None:
        self._domains: dict[str, TrackedDomain] = {}
        self._watching = False  # the metadata watch sees libvirt's files

    # --- queries ----------------------------------------------------------------------------

    def in_flight(self) -> list[Operation]:
        return [d.active for d in self._domains.values() if d.active is not None]

    def in_flight_on(self, domain: str) -> Operation | None:
        """The operation in flight on one domain, if any (observe() changes no other)."""
        d = self._domains.get(domain)
        return d.active if d is not None else None

    def is_busy(self, domain: str) -> bool:
        """True while something suggests an operation may be running: poll this domain fast."""
        d = self._domains.get(domain)
        if d is None:
            return False
        return bool(
            d.active or d.job_start or d.suspend_at or d.revert_event or d.block_job_start
            or d.revert_defined_at
        )

    def resync(self) -> None:
        """After a reconnect events may have been missed: forget what each idle domain looked
        like, so its next poll is taken as a first sight rather than diffed against old state.
        Domains with an operation in flight keep theirs, so the operation can finish."""
        for name in [n for n, d in self._domains.items() if d.active is None]:
            del self._domains[name]

    # --- input ------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> list[Operation]:
        if isinstance(obs, MetadataWatchState):
            self._watching = obs.watching
            return []
        if isinstance(obs, DomainPoll):
            return self._poll(obs)
        if isinstance(obs, DomainGone):
            return self._gone(obs)
        if isinstance(obs, DomainUnchanged):
            return self._unchanged(obs)
        if isinstance(obs, FileEvent):
            d = self._domains.get(obs.domain)
            if d is None or d.last_poll is None:  # the first poll adopts what it shows
                return []
            finished = take_file_event(d, obs)
            if d.held is not None and isinstance(obs, SnapshotFileEvent):
                finished += self._poll(d.held)  # the file it waited for may be this one
            return finished
        return take_event(self._domains.setdefault(obs.domain, TrackedDomain()), obs)

    def _unchanged(self, obs: DomainUnchanged) -> list[Operation]:
        """An idle check: nothing changed since the last poll, which may be one held for its
        file event; past the grace it is applied without."""
        d = self._domains.get(obs.domain)
        if d is None:
            return []
        finished = []
        if d.held is not None:
            assert d.ahead_since is not None
            if obs.time - d.ahead_since < FILE_GRACE:
                return []
            finished = self._poll(d.held, wait_for_files=False)
        if d.active is None and d.last_poll is not None:
            d.last_poll = max(d.last_poll, obs.time)  # nothing ran up to now
        return finished

    def _gone(self, obs: DomainGone) -> list[Operation]:
        d = self._domains.pop(obs.domain, None)
        if d is None or d.active is None:
            return []
        if d.active.operation == "save" and d.active.end is not None:
            # A transient domain saved to a file is undefined by its save (a managed save
            # refuses one).
            d.active.kind = "file"
            return finish(d, d.active.end, d.active.end_source, 0.0, "success")
        bracket = obs.time - d.last_poll if d.last_poll is not None else 0.0
        return finish(d, obs.time, "poll", bracket, "failure", "domain undefined")

    # --- polls ------------------------------------------------------------------------------

    def _poll(self, p: DomainPoll, wait_for_files: bool = True) -> list[Operation]:
        announced = p.domain in self._domains  # its events came before its first poll
        d = self._domains.setdefault(p.domain, TrackedDomain())
        first = d.last_poll is None
        before = d.snapshots
        now = {s.name: s for s in p.snapshots}
        current = next((s.name for s in p.snapshots if s.current), None)
        finished: list[Operation] = []
        if p.control_state == CONTROL_JOB and p.control_time_ms > 0:
            job_start = p.time - p.control_time_ms / 1000.0
            op = d.active
            if (op is not None and op.operation == "create" and op.resumed_at is not None
                    and job_start > op.resumed_at):
                # Back-to-back creates: the next one's job, seen before this poll closes the
                # previous create (its RESUMED came already).
                d.next_job_start = job_start
            elif d.job_start is None or abs(job_start - d.job_start) > 0.05:
                d.job_start = job_start if d.job_start is None else min(d.job_start, job_start)
            if (d.active is None and d.start_job is None and p.state == STATE_PAUSED
                    and p.reason == PAUSED_STARTING_UP):
                # A start's job, which controlInfo may read OK between its steps: kept for
                # the restore STARTED/RESTORED may make of it.
                d.start_job = job_start, "control", 0.0
        if (wait_for_files and not first and self._watching
                and ahead_of_files(d, before, now)):
            # libvirt answered before its file event reached us (it renames or removes the
            # file and changes its list within a millisecond): wait for the exact end.
            d.ahead_since = d.ahead_since if d.ahead_since is not None else p.time
            if p.time - d.ahead_since < FILE_GRACE:
                d.held = p
                return []
        d.ahead_since = d.held = None
        if first:
            finished += self._adopt(d, p, now, current, announced)
        else:
            finished += self._advance(d, p, before, now, current)
        d.failed &= set(now)
        d.snapshots = {k: v for k, v in now.items() if k not in d.failed}
        if current is not None:
            d.current = current
        d.state, d.reason = p.state, p.reason
        if p.state == STATE_SHUTOFF:  # what a start will restore; polls while it runs say none
            d.managed_save = p.managed_save
        d.last_poll = p.time
        forget_old_files(d, p)
        if p.control_state != CONTROL_JOB:
            d.restored_at = None  # the restore's job is over
            if d.active is None:
                d.job_start = None
        return finished

    def _adopt(self, d: TrackedDomain, p: DomainPoll, now: Snapshots,
               current: str | None, announced: bool) -> list[Operation]:
        """First sight of a domain (exporter start, reconnect): pick up an operation in flight,
        or end a save its events found before this poll."""
        if d.active is not None:
            return _advance_save(d, p) if d.active.operation == "save" else []
        busy = p.control_state == CONTROL_JOB or (
            p.state == STATE_PAUSED and p.reason in (PAUSED_SAVE, PAUSED_SNAPSHOT)
        )
        # A create in flight lists its snapshot, not current yet. (An older snapshot not
        # current, one reverted from, is taken for it too: requiring the snapshot to be newer
        # than the job, as controlInfo dates it, lost a create adopted mid-way on libvirt 11.3.)
        candidates = [s for s in now.values() if not s.current]
        if busy and candidates:
            newest = max(candidates, key=lambda s: s.creation_time)
            if d.job_start is not None:
                start, source, unc = d.job_start, "control", 0.0
            else:
                start, source, unc = newest.creation_time + 0.5, "creation_time", 0.5
            d.active = _describe(Operation(p.domain, "create", start, source, unc), newest, now)
        elif busy and p.state == STATE_PAUSED and p.reason == PAUSED_SAVE and d.job_start:
            # Paused for a job that made no snapshot: a save, begun as its job (one whose job
            # no poll reads has no known start, and is not logged: docs/detection.md).
            d.active = Operation(p.domain, "save", d.job_start, "control", 0.0,
                                 kind=KIND_UNKNOWN, memory=True)
        elif (busy and p.state == STATE_PAUSED and p.reason == PAUSED_STARTING_UP
              and not announced):
            # A revert announces itself by its events: a domain whose events came before its
            # first poll (one started while the exporter runs) and made none is starting up.
            d.active = Operation(p.domain, "revert", d.job_start or p.time, "control", 0.0)
        return []

    def _advance(self, d: TrackedDomain, p: DomainPoll, before: Snapshots, now: Snapshots,
                 current: str | None) -> list[Operation]:
        """A poll after the first: move the operation in flight on, or find a new one."""
        finished: list[Operation] = []
        new = [s for name, s in now.items() if name not in before]
        gone = [s for name, s in before.items() if name not in now]
        op = d.active
        # Current moved to a snapshot that existed before, none of them new or vanished: only a
        # revert does that (a create makes its new snapshot current; deleting the current
        # snapshot makes its parent current, but then one is gone).
        moved = (
            current is not None and d.current not in (None, current) and current in before
            and not gone and not (op is not None and current == op.snapshot)
            and not any(s.name == current for s in new)
        )
        if op is not None and op.operation == "create":
            finished, gone = self._advance_create(d, p, now, gone, moved)
        elif op is not None and op.operation == "revert":
            finished = self._advance_revert(d, p, now, current)
            # A revert that just ended made the move itself: not a second one.
            moved = moved and not finished
        elif op is not None and op.operation == "delete":
            finished = self._advance_delete(d, p, before, new, gone)
            gone = []  # the delete in flight and those after it took them all
        elif op is not None and op.operation == "save":
            finished = _advance_save(d, p)
        elif op is not None and op.operation == "restore":
            finished = self._advance_restore(d, p)
        if d.active is None:
            finished += self._detect(d, p, before, now, new, gone, current, moved)
        return finished

    def _advance_create(self, d: TrackedDomain, p: DomainPoll, now: Snapshots,
                        gone: list[SnapshotRecord],
                        moved: bool) -> tuple[list[Operation], list[SnapshotRecord]]:
        """The create in flight: finished, and the vanished snapshots left for a delete."""
        op = d.active
        assert op is not None
        snap = now.get(op.snapshot)
        if snap is None and op.end_source == "metadata":
            # Its file was written, so it succeeded; a delete then took it (a disk-only
            # create and its delete 1 ms apart, measured): that stays in gone.
            return finish_polled(d, p, "success"), gone
        if snap is None:
            reason = "snapshot vanished before it became current"
            if p.state == STATE_SHUTOFF and d.state != STATE_SHUTOFF:
                reason = "domain stopped during the snapshot"
            return finish_polled(d, p, "failure", reason), [s for s in gone if s.name != op.snapshot]
        if (snap.current or _has_child(snap, now) or moved
                or d.revert_defined_at is not None):
            # Current, or has a child already, or a revert came after it: it is done.
            return finish_polled(d, p, "success"), gone
        if p.state == STATE_SHUTOFF and d.state not in (0, STATE_SHUTOFF):
            return finish_polled(d, p, "failure", "domain stopped"), gone
        return [], gone

    def _advance_revert(self, d: TrackedDomain, p: DomainPoll, now: Snapshots,
                        current: str | None) -> list[Operation]:
        """The revert in flight: finished at its last event, or REVERT_SETTLE after it looked
        done without one."""
        op = d.active
        assert op is not None
        if d.job_start is not None and d.job_start < op.start:
            op.start, op.start_source, op.start_uncertainty = d.job_start, "control", 0.0
        reverting = p.control_state == CONTROL_JOB or (
            p.state == STATE_PAUSED and p.reason == PAUSED_STARTING_UP
        )
        if not reverting and op.idle_since is None:
            op.idle_since = p.time
        elif reverting:
            op.idle_since = None
        # libvirt sends the revert's last events (STARTED, RESUMED, DEFINED/FROM_SNAPSHOT)
        # after its job ends: wait for DEFINED, or give up on it after REVERT_SETTLE.
        settled = op.idle_since is not None and p.time - op.idle_since >= REVERT_SETTLE
        if op.end is None and not settled:
            return []
        if op.rewritten_at is not None and (op.end is None or op.rewritten_at > op.end):
            op.end, op.end_source = op.rewritten_at, "metadata"
        if op.end is None:
            op.end, op.end_source = op.idle_since, "poll"
            op.end_uncertainty = op.idle_since - (d.last_poll or op.idle_since)
        _describe_revert(op, now, current)
        return finish_polled(d, p, "success")

    def _advance_restore(self, d: TrackedDomain, p: DomainPoll) -> list[Operation]:
        """The restore in flight: its job's end is awaited from the status saves (FILE_GRACE)
        after the guest resumed; one to a paused guest (virsh restore --paused: no RESUMED;
        not measured here) ends at that save once a poll shows the guest paused."""
        op = d.active
        assert op is not None
        if op.end is not None and p.state == STATE_PAUSED and p.reason != PAUSED_STARTING_UP:
            return finish_polled(d, p, "success")
        if op.resumed_at is None or (self._watching and p.time - op.resumed_at < FILE_GRACE):
            return []
        return finish_polled(d, p, "success")

    def _advance_delete(self, d: TrackedDomain, p: DomainPoll, before: Snapshots,
                        new: list[SnapshotRecord], gone: list[SnapshotRecord]) -> list[Operation]:
        """The delete in flight: confirmed by the first snapshot gone (the others went after it)."""
        op = d.active
        assert op is not None
        if gone:
            victim, *others = gone
            _describe(op, victim, before)
            end_at_removal(d, op)
            return finish_polled(d, p, "success") + self._deleted_between_polls(d, p, others, before)
        if p.control_state != CONTROL_JOB or (new and not op.snapshot):
            # A job that deleted nothing, or that a new snapshot shows was a create.
            d.active = None
        return []

    def _detect(
        self, d: TrackedDomain, p: DomainPoll, before: Snapshots, now: Snapshots,
        new: list[SnapshotRecord], gone: list[SnapshotRecord], current: str | None,
        switched: bool,
    ) -> list[Operation]:
        """No operation in flight: find one that started, or one that ran between two polls."""
        finished: list[Operation] = []
        creates = [s for s in new if not _redefined(d, s) and s.name not in d.failed]
        for snap in sorted(creates, key=lambda s: s.creation_time):
            # Done when current, when it has a child, or when a revert moved current after it.
            done = (snap.current or _has_child(snap, now) or switched
                    or d.revert_defined_at is not None)
            start, source, unc = create_start(d, p, snap)
            op = _describe(Operation(p.domain, "create", start, source, unc), snap, now)
            written = file_written(d, snap.name)
            if written is not None and written >= start:
                op.end, op.end_source = written, "metadata"  # its file appeared as it ended
            if d.resume_at is not None and d.resume_at >= start:
                op.paused_seconds, op.resumed_at = d.pause_before_active, d.resume_at
            d.suspend_at = d.resume_at = None
            d.active = op
            if done:
                finished += finish_polled(d, p, "success")
            else:
                if d.paused_since is not None:
                    op.paused_since = d.paused_since
                return finished
        if d.revert_defined_at is not None and gone:
            # A revert (its DEFINED/FROM_SNAPSHOT event came) and deletes since the last poll.
            finished += self._revert_between_polls(d, p, now, current)
        if gone:
            finished += self._deleted_between_polls(d, p, gone, before)
        elif switched or d.revert_defined_at is not None:
            finished += self._revert_between_polls(d, p, now, current)
        elif d.job_start is not None and p.state == STATE_RUNNING and now and not d.restored_at:
            # An async job on a running domain that created nothing and is no revert: the
            # only snapshot operation left is a delete. It is confirmed when a snapshot goes.
            d.active = Operation(p.domain, "delete", d.job_start, "control", 0.0)
        d.revert_defined_at = None
        if not d.active:
            d.suspend_at = None if d.paused_since is None else d.suspend_at
        return finished

    def _revert_between_polls(self, d: TrackedDomain, p: DomainPoll, now: Snapshots,
                              current: str | None) -> list[Operation]:
        since = d.last_poll if d.last_poll is not None else p.time
        rewritten = last_rewrite(d, since)
        end, end_source = None, ""
        if d.revert_defined_at is not None:
            end, end_source = d.revert_defined_at, "event"
        elif rewritten is not None:  # the current flags rewritten: its end
            end, end_source = rewritten, "metadata"
        op = Operation(p.domain, "revert", *unseen_start(d, p, end))
        _describe_revert(op, now, current)
        op.defined_at = d.revert_defined_at
        d.active = op
        if end is not None:
            op.end, op.end_source = end, end_source
        d.revert_defined_at = None
        return finish_polled(d, p, "success")

    def _deleted_between_polls(self, d: TrackedDomain, p: DomainPoll, gone: list[SnapshotRecord],
                               before: Snapshots) -> list[Operation]:
        finished = []
        for snap in gone:
            start, source, unc = unseen_start(d, p, file_removed(d, snap.name))
            op = _describe(Operation(p.domain, "delete", start, source, unc), snap, before)
            d.active = op
            if d.block_job_end is not None and d.block_job_end >= start:
                op.end, op.end_source = d.block_job_end, "event"
            end_at_removal(d, op)
            finished += finish_polled(d, p, "success")
        return finished


def _advance_save(d: TrackedDomain, p: DomainPoll) -> list[Operation]:
    """The save in flight ended at STOPPED/SAVED; the poll that event brings tells its kind."""
    op = d.active
    assert op is not None
    if op.end is None or p.state != STATE_SHUTOFF:
        return []
    d.managed_save = p.managed_save
    return finish_save(d)


def _redefined(d: TrackedDomain, snap: SnapshotRecord) -> bool:
    """A snapshot stamped well before our previous poll was imported, not created now."""
    return d.last_poll is not None and snap.creation_time < d.last_poll - 2.0


def _describe(op: Operation, snap: SnapshotRecord, tree: Snapshots) -> Operation:
    op.snapshot, op.kind, op.memory = snap.name, snap.kind, snap.memory
    op.depth = depth_of(tree, snap.name)
    return op


def _describe_revert(op: Operation, now: Snapshots, current: str | None) -> None:
    """A revert is of the snapshot it made current."""
    op.snapshot = current or ""
    op.depth = depth_of(now, current)
    target = now.get(current or "")
    if target is not None:
        op.kind, op.memory = target.kind, target.memory


def _has_child(snap: SnapshotRecord, now: Snapshots) -> bool:
    """A create whose snapshot has a child already finished, whatever current says."""
    return any(s.parent == snap.name for s in now.values())
