"""The snapshot operation tracker: a pure state machine.

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
  XML saved as a job begins is the start of a delete no poll caught.
When a start or end was not seen directly it is bracketed by polls and the bracket is recorded
as the uncertainty.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from .observations import (
    CONTROL_JOB,
    DETAIL_DEFINED_FROM_SNAPSHOT,
    DETAIL_RESUMED_FROM_SNAPSHOT,
    DETAIL_STARTED_FROM_SNAPSHOT,
    DETAIL_STOPPED_FROM_SNAPSHOT,
    DETAIL_SUSPENDED_FROM_SNAPSHOT,
    EVENT_DEFINED,
    EVENT_RESUMED,
    EVENT_STARTED,
    EVENT_STOPPED,
    EVENT_SUSPENDED,
    JOB_OPERATION_SNAPSHOT,
    STATE_PAUSED,
    STATE_RUNNING,
    STATE_SHUTOFF,
    BlockJobEvent,
    DomainGone,
    DomainPoll,
    DomainStatusSaved,
    DomainUnchanged,
    JobCompletedEvent,
    JobProgress,
    LifecycleEvent,
    MetadataWatchState,
    Observation,
    SnapshotFileEvent,
    SnapshotRecord,
)

PAUSED_SAVE, PAUSED_SNAPSHOT, PAUSED_STARTING_UP = 3, 9, 11
DETAIL_SUSPENDED_API_ERROR = 6  # an API call failed while the guest was paused
REVERT_SETTLE = 2.0  # seconds a revert may look finished before its last event is given up on
FILE_GRACE = 0.5  # seconds a poll ahead of the file events waits for them (they take ms)
FILE_MEMORY = 10.0  # seconds file and status events are kept for the polls that explain them
CLOSING_SAVE = 0.01  # a job's closing status save follows its file event by 1-3 ms (libvirt 9.0)
POLL_SLACK = 0.25  # a poll is stamped when read, up to this long after libvirt answered it
STATUS_LAG = 0.005  # the status XML is saved 2-4 ms after a snapshot call begins (9.0 and 11.3)
REVERT_EVENTS = {
    (EVENT_SUSPENDED, DETAIL_SUSPENDED_FROM_SNAPSHOT),
    (EVENT_STOPPED, DETAIL_STOPPED_FROM_SNAPSHOT),
    (EVENT_STARTED, DETAIL_STARTED_FROM_SNAPSHOT),
    (EVENT_RESUMED, DETAIL_RESUMED_FROM_SNAPSHOT),
}


_ids = itertools.count(1)


@dataclass
class Operation:
    """One snapshot operation, in flight (end is None) or finished."""

    domain: str
    operation: str  # create | delete | revert
    start: float
    start_source: str  # control | event | job_completed | poll | creation_time
    start_uncertainty: float
    snapshot: str = ""
    kind: str = "internal"
    memory: bool = False
    depth: int = 0
    end: float | None = None
    end_source: str = ""
    end_uncertainty: float = 0.0
    outcome: str = ""  # success | failure, once finished
    error: str = ""
    paused_seconds: float = 0.0
    job: dict[str, Any] = field(default_factory=dict)
    memory_processed_bytes: int | None = None
    memory_remaining_bytes: int | None = None
    # internal bookkeeping while in flight
    paused_since: float | None = None
    resumed_at: float | None = None
    failed_at: float | None = None  # SUSPENDED/API_ERROR: the create call failed here
    idle_since: float | None = None
    rewritten_at: float | None = None  # a revert's snapshot files rewritten: its end
    defined_at: float | None = None  # a revert's DEFINED/FROM_SNAPSHOT, its last event
    id: int = field(default_factory=lambda: next(_ids))

    @property
    def duration(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - self.start)

    @property
    def key(self) -> str:
        """Stable while the operation runs, though its start may still be refined."""
        return f"{self.domain}/{self.id}"


@dataclass
class _Domain:
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
    defined_due: float | None = None  # end of a revert finished before its DEFINED event came
    state: int = 0
    failed: set[str] = field(default_factory=set)  # snapshots of failed creates, still listed
    files: dict[str, tuple[float, str]] = field(default_factory=dict)  # snapshot -> last change
    status_saved: list[float] = field(default_factory=list)  # recent status XML saves
    last_end: float | None = None  # end of the last operation finished here
    ahead_since: float | None = None  # polls have shown an end whose file event is still due
    held: DomainPoll | None = None  # the latest such poll, applied once its file event comes


def depth_of(snapshots: dict[str, SnapshotRecord], name: str | None) -> int:
    """Depth of a snapshot in its tree, the root being 1 (the study's "level"); 0 for none."""
    depth, seen = 0, set()
    while name is not None and name in snapshots and name not in seen:
        seen.add(name)
        depth += 1
        name = snapshots[name].parent
    return depth


class Tracker:
    """Turns observations into operations. observe() returns the operations it finished."""

    def __init__(self) -> None:
        self._domains: dict[str, _Domain] = {}
        self._watching = False  # the metadata watch sees libvirt's files

    # --- queries ----------------------------------------------------------------------------

    def in_flight(self) -> list[Operation]:
        return [d.active for d in self._domains.values() if d.active is not None]

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
        if isinstance(obs, SnapshotFileEvent | DomainStatusSaved):
            d = self._domains.get(obs.domain)
            if d is None or d.last_poll is None:  # the first poll adopts what it shows
                return []
            finished = self._file_event(d, obs)
            if d.held is not None and isinstance(obs, SnapshotFileEvent):
                finished += self._poll(d.held)  # the file it waited for may be this one
            return finished
        d = self._domains.setdefault(obs.domain, _Domain())
        if isinstance(obs, LifecycleEvent):
            return self._lifecycle(d, obs)
        if isinstance(obs, JobCompletedEvent):
            self._job_completed(d, obs)
        elif isinstance(obs, BlockJobEvent):
            if d.block_job_start is None:
                d.block_job_start = obs.time
            d.block_job_end = obs.time
        elif isinstance(obs, JobProgress) and d.active is not None:
            d.active.memory_processed_bytes = obs.processed_bytes
            d.active.memory_remaining_bytes = obs.remaining_bytes
        return []

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

    # --- events -----------------------------------------------------------------------------

    def _file_event(self, d: _Domain, ev: SnapshotFileEvent | DomainStatusSaved) -> list[Operation]:
        """Kept for the poll that finds the operation; an operation in flight takes its end."""
        if isinstance(ev, DomainStatusSaved):
            d.status_saved.append(ev.time)
            return []
        created = d.files.get(ev.snapshot, (0.0, ""))
        d.files[ev.snapshot] = (ev.time, ev.change)
        op = d.active
        if (ev.change == "removed" and created[1] == "created" and ev.snapshot not in d.snapshots
                and (op is None or op.snapshot != ev.snapshot)):
            return self._unpolled_pair(d, ev.domain, ev.snapshot, created[0], ev.time)
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

    def _unpolled_pair(self, d: _Domain, domain: str, name: str, created: float,
                       removed: float) -> list[Operation]:
        """A snapshot created and deleted between two polls (a disk-only create and its delete
        1 ms later take 50 ms together, measured on 11.3): both from the files. No poll listed
        it, so its kind comes from the delete's block job (an external delete commits) and it
        had no memory (a memory snapshot lasts long enough to be polled)."""
        op = d.active
        if op is not None:
            return []
        lo = max(d.last_poll or created, self._after_last_end(d))
        saves = sorted(t for t in d.status_saved if lo <= t <= removed)
        kind = "external" if d.block_job_start is not None else "internal"
        ops = []
        for operation, after, end in (("create", lo, created), ("delete", created, removed)):
            starts = [t for t in saves if after + (CLOSING_SAVE if operation == "delete" else 0)
                      <= t < end]
            if starts:
                start, source, unc = starts[0] - STATUS_LAG, "status", STATUS_LAG
            else:
                start, source, unc = after, "poll", end - after
            d.active = Operation(domain, operation, start, source, unc, snapshot=name, kind=kind)
            d.active.end, d.active.end_source = end, "metadata"
            ops += self._finish(d, end, "metadata", 0.0, "success")
        d.failed.add(name)  # a poll answered before it went must not count it again
        return ops

    def _lifecycle(self, d: _Domain, ev: LifecycleEvent) -> list[Operation]:
        pair = (ev.event, ev.detail)
        op = d.active
        if pair in REVERT_EVENTS:
            if op is None or op.operation != "revert":
                if op is not None and op.operation == "delete" and not op.snapshot:
                    # A job taken for a delete before anything went: it was this revert's.
                    d.active = op = None
                finished = self._finish(d, ev.time, "event", 0.0, "success") if op else []
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
        elif ev.event == EVENT_STOPPED and op is not None and op.operation == "create":
            return self._finish(d, op.failed_at or ev.time, "event", 0.0, "failure",
                                "domain stopped")
        return []

    def _job_completed(self, d: _Domain, ev: JobCompletedEvent) -> None:
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

    # --- polls ------------------------------------------------------------------------------

    def _gone(self, obs: DomainGone) -> list[Operation]:
        d = self._domains.pop(obs.domain, None)
        if d is None or d.active is None:
            return []
        return self._finish(d, obs.time, "poll", self._bracket(d, obs.time), "failure",
                            "domain undefined")

    def _poll(self, p: DomainPoll, wait_for_files: bool = True) -> list[Operation]:
        first = p.domain not in self._domains
        d = self._domains.setdefault(p.domain, _Domain())
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
        if (wait_for_files and not first and self._watching
                and self._ahead_of_files(d, before, now)):
            # libvirt answered before its file event reached us (it renames or removes the
            # file and changes its list within a millisecond): wait for the exact end.
            d.ahead_since = d.ahead_since if d.ahead_since is not None else p.time
            if p.time - d.ahead_since < FILE_GRACE:
                d.held = p
                return []
        d.ahead_since = d.held = None
        if first:
            finished += self._adopt(d, p, now, current)
        else:
            finished += self._advance(d, p, before, now, current)
        d.failed &= set(now)
        d.snapshots = {k: v for k, v in now.items() if k not in d.failed}
        if current is not None:
            d.current = current
        d.state = p.state
        d.last_poll = p.time
        d.files = {k: v for k, v in d.files.items() if v[0] > p.time - FILE_MEMORY}
        d.status_saved = [t for t in d.status_saved if t > p.time - FILE_MEMORY]
        if d.active is None and p.control_state != CONTROL_JOB:
            d.job_start = None
        return finished

    def _adopt(self, d: _Domain, p: DomainPoll, now: dict, current: str | None) -> list[Operation]:
        """First sight of a domain (exporter start, reconnect): pick up an operation in flight."""
        busy = p.control_state == CONTROL_JOB or (
            p.state == STATE_PAUSED and p.reason in (PAUSED_SAVE, PAUSED_SNAPSHOT)
        )
        candidates = [s for s in now.values() if not s.current]
        if busy and candidates:
            newest = max(candidates, key=lambda s: s.creation_time)
            if d.job_start is not None:
                start, source, unc = d.job_start, "control", 0.0
            else:
                start, source, unc = newest.creation_time + 0.5, "creation_time", 0.5
            d.active = self._new_op(p.domain, "create", newest, now, start, source, unc)
        elif busy and p.state == STATE_PAUSED and p.reason == PAUSED_STARTING_UP:
            d.active = Operation(p.domain, "revert", d.job_start or p.time, "control", 0.0)
        return []

    def _advance(
        self, d: _Domain, p: DomainPoll, before: dict, now: dict, current: str | None
    ) -> list[Operation]:
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
        revert_ended = False

        if op is not None and op.operation == "create":
            snap = now.get(op.snapshot)
            if snap is None and op.end_source == "metadata":
                # Its file was written, so it succeeded; a delete then took it (a disk-only
                # create and its delete 1 ms apart, measured): that stays in gone.
                finished += self._finish_polled(d, p, "success")
            elif snap is None:
                reason = "snapshot vanished before it became current"
                if p.state == STATE_SHUTOFF and d.state != STATE_SHUTOFF:
                    reason = "domain stopped during the snapshot"
                finished += self._finish_polled(d, p, "failure", reason)
                gone = [s for s in gone if s.name != op.snapshot]
            elif (snap.current or self._idle_without_becoming_current(p, snap, now) or moved
                  or d.revert_defined_at is not None):
                # Current, or has a child already, or a revert came after it: it is done.
                finished += self._finish_polled(d, p, "success")
            elif p.state == STATE_SHUTOFF and d.state not in (0, STATE_SHUTOFF):
                finished += self._finish_polled(d, p, "failure", "domain stopped")
            op = d.active
        elif op is not None and op.operation == "revert":
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
            if op.end is not None or settled:
                if op.rewritten_at is not None and (op.end is None or op.rewritten_at > op.end):
                    op.end, op.end_source = op.rewritten_at, "metadata"
                if op.end is None:
                    op.end, op.end_source = op.idle_since, "poll"
                    op.end_uncertainty = op.idle_since - (d.last_poll or op.idle_since)
                op.snapshot = current or ""
                op.depth = depth_of(now, current)
                target = now.get(current or "")
                if target is not None:
                    op.kind, op.memory = target.kind, target.memory
                finished += self._finish_polled(d, p, "success")
                revert_ended = True
            op = d.active
        elif op is not None and op.operation == "delete":
            if gone:
                victim = gone.pop(0)
                self._describe(op, victim, before)
                self._removed_at(d, op)
                finished += self._finish_polled(d, p, "success")
                finished += self._deleted_between_polls(d, p, gone, before)
                gone = []
            elif p.control_state != CONTROL_JOB or (new and not op.snapshot):
                # A job that deleted nothing, or that a new snapshot shows was a create.
                d.active = None
            op = d.active

        if op is None:
            # A revert that just ended made the move itself: not a second one.
            finished += self._detect(d, p, before, now, new, gone, current,
                                     moved and not revert_ended)
        return finished

    def _detect(
        self, d: _Domain, p: DomainPoll, before: dict, now: dict, new: list, gone: list,
        current: str | None, switched: bool,
    ) -> list[Operation]:
        """No operation in flight: find one that started, or one that ran between two polls."""
        finished: list[Operation] = []
        creates = [s for s in new if not self._redefined(d, s) and s.name not in d.failed]
        for snap in sorted(creates, key=lambda s: s.creation_time):
            # Done when current, when it has a child, or when a revert moved current after it.
            done = (snap.current or any(s.parent == snap.name for s in now.values()) or switched
                    or d.revert_defined_at is not None)
            start, source, unc = self._create_start(d, p, snap)
            op = self._new_op(p.domain, "create", snap, now, start, source, unc)
            written, change = d.files.get(snap.name, (None, "removed"))
            if change != "removed" and written is not None and written >= start:
                op.end, op.end_source = written, "metadata"  # its file appeared as it ended
            if d.resume_at is not None and d.resume_at >= start:
                op.paused_seconds, op.resumed_at = d.pause_before_active, d.resume_at
            d.suspend_at = d.resume_at = None
            d.active = op
            if done:
                finished += self._finish_polled(d, p, "success")
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
        elif d.job_start is not None and p.state == STATE_RUNNING and now:
            # An async job on a running domain that created nothing and is no revert: the
            # only snapshot operation left is a delete. It is confirmed when a snapshot goes.
            d.active = Operation(p.domain, "delete", d.job_start, "control", 0.0)
        d.revert_defined_at = None
        if not d.active:
            d.suspend_at = None if d.paused_since is None else d.suspend_at
        return finished

    def _revert_between_polls(self, d: _Domain, p: DomainPoll, now: dict,
                              current: str | None) -> list[Operation]:
        since = d.last_poll if d.last_poll is not None else p.time
        rewritten = [t for t, change in d.files.values() if change == "rewritten" and t >= since]
        end, end_source = None, ""
        if d.revert_defined_at is not None:
            end, end_source = d.revert_defined_at, "event"
        elif rewritten:  # the current flags rewritten: its end
            end, end_source = max(rewritten), "metadata"
        op = Operation(p.domain, "revert", *self._unseen_start(d, p, end))
        op.snapshot = current or ""
        target = now.get(op.snapshot)
        if target is not None:
            op.kind, op.memory = target.kind, target.memory
        op.depth = depth_of(now, current)
        op.defined_at = d.revert_defined_at
        d.active = op
        if end is not None:
            op.end, op.end_source = end, end_source
        d.revert_defined_at = None
        return self._finish_polled(d, p, "success")

    def _deleted_between_polls(
        self, d: _Domain, p: DomainPoll, gone: list, before: dict
    ) -> list[Operation]:
        finished = []
        for snap in gone:
            removed = d.files.get(snap.name, (None, ""))
            end = removed[0] if removed[1] == "removed" else None
            start, source, unc = self._unseen_start(d, p, end)
            op = Operation(p.domain, "delete", start, source, unc)
            self._describe(op, snap, before)
            d.active = op
            if d.block_job_end is not None and d.block_job_end >= start:
                op.end, op.end_source = d.block_job_end, "event"
            self._removed_at(d, op)
            finished += self._finish_polled(d, p, "success")
        return finished

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _removed_at(d: _Domain, op: Operation) -> None:
        """A delete ends when libvirt removes the snapshot's file (exact, also for an external
        delete, whose block job ends before it)."""
        when, change = d.files.pop(op.snapshot, (None, ""))
        if change == "removed" and when is not None and when >= op.start:
            op.end, op.end_source, op.end_uncertainty = when, "metadata", 0.0

    @staticmethod
    def _describe(op: Operation, snap: SnapshotRecord, tree: dict) -> None:
        op.snapshot, op.kind, op.memory = snap.name, snap.kind, snap.memory
        op.depth = depth_of(tree, snap.name)

    def _new_op(self, domain: str, kind: str, snap: SnapshotRecord, tree: dict, start: float,
                source: str, unc: float) -> Operation:
        op = Operation(domain, kind, start, source, unc)
        self._describe(op, snap, tree)
        return op

    def _redefined(self, d: _Domain, snap: SnapshotRecord) -> bool:
        """A snapshot stamped well before our previous poll was imported, not created now."""
        return d.last_poll is not None and snap.creation_time < d.last_poll - 2.0

    @staticmethod
    def _idle_without_becoming_current(p: DomainPoll, snap: SnapshotRecord, now: dict) -> bool:
        """A create whose snapshot has a child already finished, whatever current says."""
        return any(s.parent == snap.name for s in now.values())

    def _create_start(self, d: _Domain, p: DomainPoll, snap: SnapshotRecord):
        written, change = d.files.get(snap.name, (p.time, "removed"))
        if change == "removed":
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
        # The first status XML save of the create's job, after whatever ran before it.
        after = max(snap.creation_time, self._after_last_end(d))
        saves = [t for t in d.status_saved if after <= t <= hi]
        if saves:
            return min(saves) - STATUS_LAG, "status", STATUS_LAG
        if lo > hi:
            lo = hi = min(snap.creation_time + 0.5, p.time)
        return (lo + hi) / 2, "creation_time", (hi - lo) / 2

    @staticmethod
    def _ahead_of_files(d: _Domain, before: dict, now: dict) -> bool:
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

    @staticmethod
    def _after_last_end(d: _Domain) -> float:
        """Status saves after this can be the next job's; the last one's closing save is not."""
        return d.last_end + CLOSING_SAVE if d.last_end is not None else -1e18

    def _unseen_start(self, d: _Domain, p: DomainPoll, end: float | None = None):
        """Start of an operation first noticed after it ended (at end, when a file said so)."""
        if d.job_start is not None:
            return d.job_start, "control", 0.0
        if d.block_job_start is not None:
            return d.block_job_start, "event", 0.0
        last = d.last_poll if d.last_poll is not None else p.time
        if end is not None:
            # The status XML saved as its job began: the first save after whatever ran before
            # (libvirt 11.3 saves again mid-job and just before the end) and not before the
            # last poll (a job it would have seen), give or take the time an answer waits.
            after = max(last - POLL_SLACK, self._after_last_end(d))
            saves = [t for t in d.status_saved if after < t < end]
            if saves:
                return min(saves) - STATUS_LAG, "status", STATUS_LAG
            return last, "poll", max(0.0, end - last)
        return last, "poll", p.time - last

    @staticmethod
    def _bracket(d: _Domain, t: float) -> float:
        return t - d.last_poll if d.last_poll is not None else 0.0

    def _finish_polled(
        self, d: _Domain, p: DomainPoll, outcome: str, error: str = ""
    ) -> list[Operation]:
        op = d.active
        assert op is not None
        if op.end is not None:  # an event already gave the end
            return self._finish(d, op.end, op.end_source, op.end_uncertainty, outcome, error)
        if outcome == "failure" and op.failed_at is not None:
            return self._finish(d, op.failed_at, "event", 0.0, outcome, error)
        if op.resumed_at is not None and op.resumed_at >= op.start:
            return self._finish(d, op.resumed_at, "event", 0.0, outcome, error)
        last = d.last_poll if d.last_poll is not None and d.last_poll >= op.start else op.start
        # Ended after the last poll that saw it running and before this one.
        return self._finish(d, (last + p.time) / 2, "poll", (p.time - last) / 2, outcome, error)

    def _finish(
        self, d: _Domain, end: float, source: str, uncertainty: float, outcome: str,
        error: str = "",
    ) -> list[Operation]:
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
