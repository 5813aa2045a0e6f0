"""The collection loop: polls libvirt, the host and QEMU processes, feeds the tracker, publishes.

One thread does all collection; events from libvirt's event thread wake it at once. Domains
with an operation in flight (or a sign of one) are polled every busy-interval, the others every
poll-interval; guest statistics and process figures of idle domains every stats-interval.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Config
from .context import ContextKeeper
from .flight_recorder import FlightRecorder
from .host import HostReader, HostSample
from .images import image_usage
from .inbox import Inbox
from .libvirt_adapter import LibvirtAdapter, LibvirtUnavailable
from .metadata_watch import MetadataWatch, default_directory
from .observations import (
    CONTROL_JOB,
    STATE_SHUTOFF,
    DiskInfo,
    DomainGone,
    DomainPoll,
    DomainStatusSaved,
    DomainUnchanged,
    GuestStats,
    MetadataWatchState,
    Observation,
    Versions,
    to_record,
)
from .operation_record import finished_operation, progress_estimate
from .oplog import OperationsLog
from .qemu_process import ProcessReader, ProcessSample
from .records import FinishedOperation
from .state import (
    CollectorStatus,
    CpuReading,
    DomainView,
    InFlight,
    StateStore,
    View,
    cpu_ratio,
    cpu_reading,
    guest_memory_total,
    guest_memory_used,
)
from .trace import Trace
from .tracker import Operation, Tracker
from .verdict import judge, reference_rate

log = logging.getLogger(__name__)

DISK_REFRESH_SECONDS = 60.0
RESYNC_SECONDS = 60.0  # a full poll of every domain at least this often, whatever it looks like
POLL_WAIT = 0.2  # seconds a cycle waits for per-domain polls before going on without them
STOP_WAIT = 5.0  # seconds stop() waits for the loop, whatever libvirt is doing


@dataclass
class _DomainCache:
    uuid: str = ""
    poll: DomainPoll | None = None
    stats: GuestStats = GuestStats()
    cpu_sample: CpuReading | None = None
    cpu_ratio: float | None = None
    disks: tuple[DiskInfo, ...] = ()
    disks_read_at: float = 0.0
    process: ProcessSample | None = None
    image_size: int | None = None
    filesystems: dict[str, int] = field(default_factory=dict)
    state: tuple[int, int] = (0, 0)
    version: int = 0  # bumped whenever something published about the domain changes
    view: DomainView | None = None
    view_version: int = -1
    next_check: float = 0.0
    next_resync: float = 0.0


def _stagger(name: str) -> float:
    """Spread the periodic full polls of many domains over the resync period."""
    return zlib.crc32(name.encode()) % 1000 / 1000 * RESYNC_SECONDS


class Collector:
    """Owns the adapters, the tracker and the operations log; publishes views to the store."""

    def __init__(self, config: Config, store: StateStore, oplog: OperationsLog,
                 on_publish: Callable[[], None] = lambda: None,
                 recorder: FlightRecorder | None = None) -> None:
        self.config = config
        self.recorder = recorder  # None: trace.operations is 0
        self.store = store
        self.oplog = oplog
        self._on_publish = on_publish
        self._events: Inbox[Observation] = Inbox()
        self.adapter = LibvirtAdapter(
            config["libvirt.uri"], self._events.put, config["libvirt.timeout"],
            config["libvirt.pid-directory"],
        )
        directory = config["libvirt.snapshot-directory"]
        self.watch = MetadataWatch(
            default_directory(config["libvirt.uri"]) if directory == "auto" else directory,
            config["libvirt.pid-directory"], self._events.put,
        )
        self.host = HostReader(config["path.procfs"])
        self.processes = ProcessReader(config["path.procfs"])
        self.tracker = Tracker()
        self.contexts = ContextKeeper()
        # node.hostname, else the name libvirtd reports once connected, else this host's.
        self.hostname = self.host.hostname(config["node.hostname"])
        self.kernel = self.host.kernel()
        self._domains: dict[str, _DomainCache] = {}
        self._status: dict[str, CollectorStatus] = {}
        self._versions: Versions | None = None
        self._host_sample: HostSample | None = None
        self._was_up = False
        self._next_stats = 0.0
        self._states: dict[str, tuple[int, int]] = {}
        self._next_states = 0.0
        self._pending: dict[str, tuple[str, concurrent.futures.Future]] = {}
        # key -> (the call, what handles its answer, the source it belongs to)
        self._later_calls: dict[str, tuple[concurrent.futures.Future, Callable, str]] = {}
        self._states_ok = False
        self._stats_started = 0.0
        self._since: dict[str, float] = {}  # when a still-pending poll was first waited for
        self._failing: set[str] = set()  # sources whose last step raised
        self._failed_this_cycle: set[str] = set()  # a later success in the cycle keeps 0
        self._woken: set[str] = set()  # domains named by events since the last poll round
        self._check_interval = config["collector.poll-interval"]
        self._traced: queue.SimpleQueue[tuple[Trace, FinishedOperation]] = queue.SimpleQueue()
        if recorder is not None:
            recorder.on_trace = self._on_trace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.watch.start()
        self._thread.start()
        if self.recorder is not None:
            self.recorder.start()

    def stop(self) -> None:
        """Bounded whatever libvirtd does: the loop is given STOP_WAIT to end its cycle (it may be
        waiting for a libvirt call), then the log is flushed and the connection dropped."""
        self._stop.set()
        self._events.wake()
        self._thread.join(timeout=STOP_WAIT)
        if self.recorder is not None:
            self.recorder.stop()  # finishes the traces of operations that ended
            self._judge_traced()
        self.oplog.close()
        self.watch.stop()
        self.adapter.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.cycle()
            except Exception:  # never let the loop die: log and go on
                log.exception("collection cycle failed")
            self._wait()

    def _wait(self) -> None:
        """Sleep until the next domain is due, or until an event arrives."""
        due = min((c.next_check for c in self._domains.values()), default=0.0)
        timeout = max(0.02, min(due, self._next_stats) - time.time())
        timeout = min(timeout, self.config["collector.poll-interval"])
        if self._pending or self._later_calls:  # calls still out: come back for them soon
            timeout = min(timeout, self.config["collector.busy-interval"])
        self._events.wait(timeout)

    # --- one cycle --------------------------------------------------------------------------

    def cycle(self) -> None:
        """One pass over every source; each runs isolated, so one that fails (bad host
        figures, a libvirt answer of the wrong shape) fails alone, and whatever happened the
        log is written and the view published."""
        self._failed_this_cycle.clear()
        try:
            self._collect()
            self._judge_traced()
        finally:
            self.oplog.flush()
            self._publish()

    def _collect(self) -> None:
        self._isolated("domains", self._drain_events)
        self._mark("metadata", self.watch.ok, 0.0)
        if not self.adapter.ensure_connected():
            if self._was_up:
                log.warning("libvirt at %s unreachable: %s", self.adapter.uri,
                            self.adapter.last_error)
            self._was_up = False
            self._mark("domains", False, 0.0)
            self._isolated("host", self._sample_host)
            return
        if not self._was_up:
            self._on_connect()
        now = time.time()
        self._isolated("domains", lambda: self._poll_domains(now))
        self._isolated("domains", self._drain_events)
        self._isolated("host", self._sample_host)
        if now >= self._next_stats:
            self._next_stats = now + self.config["collector.stats-interval"]
            self._collect_stats(now)
        else:
            self._isolated("qemu_process", lambda: self._sample_busy_processes(now))
        self._finish_later(0.0)
        self._isolated("domains", self._job_progress)

    def _isolated(self, source: str, step: Callable[[], None]) -> None:
        """Run one source's step; an exception sets that source's success to 0 and is logged
        once until the source works again, and the cycle goes on with the others."""
        start = time.time()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is that source's alone
            if source not in self._failing:
                log.error("collector %s failed: %s: %s (logged once until it recovers)",
                          source, type(exc).__name__, exc)
                self._failing.add(source)
            self._failed_this_cycle.add(source)
            self._mark(source, False, time.time() - start)

    def _on_connect(self) -> None:
        self._was_up = True
        self.tracker.resync()
        try:
            self._versions = self.adapter.versions()
            if not self.config["node.hostname"]:
                self.hostname = self.adapter.hostname()
        except Exception as exc:  # noqa: BLE001 - any libvirt failure: retry next connect
            log.warning("cannot read versions and host name: %s", exc)
        self._pending.clear()  # calls on the old connection
        self._later_calls.clear()
        self._states_ok = False
        for cache in self._domains.values():
            cache.next_check = 0.0
            cache.poll = None
        self._next_stats = self._next_states = 0.0

    def _drain_events(self, until: float = math.inf) -> None:
        """Feed the queued events stamped up to `until` to the tracker; the domains they name
        are polled at once."""
        for obs in self._events.drain_until(until):
            # A status save is also the start of any job (a revert's, before its first event):
            # a poll then could take it for a delete. Nothing to poll for either of these.
            if not isinstance(obs, DomainStatusSaved | MetadataWatchState):
                self._woken.add(obs.domain)
            self._observe(obs)

    def _observe_answer(self, obs: DomainPoll | DomainUnchanged | DomainGone) -> None:
        """A poll's answer goes to the tracker after the events stamped before it and before
        the later ones, which stay queued (see inbox.py)."""
        self._drain_events(obs.time)
        self._observe(obs)

    def _observe(self, obs: Observation) -> None:
        if log.isEnabledFor(logging.DEBUG):  # one replayable line (observations.from_record)
            log.debug("observation %s", json.dumps(to_record(obs)))
        before = {op.key for op in self.tracker.in_flight()}
        finished = self.tracker.observe(obs)
        for op in self.tracker.in_flight():
            if op.key not in before:
                self._begin(op)
        for op in finished:
            if op.key not in before:
                self._begin(op)
            self._record(op)

    def _poll_domains(self, now: float) -> None:
        """One NOWAIT state call for all domains; then, per domain, a full poll where
        something may have changed, else the two-call idle check when it is due."""
        start = time.time()
        woken, self._woken = self._woken, set()
        check_interval = max(self.config["collector.poll-interval"],
                             2 * len(self._domains) / self.config["collector.max-calls-per-second"])
        # Lifecycle events announce state changes, definitions and removals: without one, the
        # list of all domains' states is refreshed at the idle check interval only.
        # An event may announce a create that fails within 0.1 s: poll its domain first.
        for name in woken:
            if name in self._domains and name not in self._pending:
                with contextlib.suppress(LibvirtUnavailable):
                    self._pending[name] = ("poll", self.adapter.poll_domain(name))
        if woken or now >= self._next_states:
            self._later("states", self.adapter.states, self._got_states, "domains")
            self._next_states = now + check_interval
        self._finish_later(POLL_WAIT)
        if not self._states_ok:
            self._mark("domains", False, time.time() - start)
            return
        states = self._states
        for gone in [n for n in self._domains if n not in states]:
            self._pending.pop(gone, None)
            self._observe_answer(DomainGone(now, gone))
            self._forget(gone)
        ok = self._collect_polls(now)
        for name, state in states.items():
            cache = self._domains.setdefault(name, _DomainCache(next_resync=now + _stagger(name)))
            if name in self._pending:
                continue
            busy = self.tracker.is_busy(name)
            full = (cache.poll is None or name in woken or state != cache.state
                    or now >= cache.next_resync or (busy and now >= cache.next_check))
            cache.state = state
            try:
                if full:
                    self._pending[name] = ("poll", self.adapter.poll_domain(name))
                elif now >= cache.next_check:
                    active = state[0] != STATE_SHUTOFF
                    self._pending[name] = ("check", self.adapter.check_domain(name, active))
                    cache.next_check = now + check_interval
            except LibvirtUnavailable as exc:  # an earlier call of this domain still runs
                log.debug("poll of %s: %s", name, exc)
        # Nearly every call answers within a millisecond: collect them in this cycle. A domain
        # whose lock is held (a revert, an offline snapshot) answers later, without holding up
        # the others.
        concurrent.futures.wait([f for _, f in self._pending.values()], timeout=POLL_WAIT)
        ok &= self._collect_polls(now)
        if any(kind == "poll" and f.done() for kind, f in self._pending.values()):
            concurrent.futures.wait([f for _, f in self._pending.values()], timeout=POLL_WAIT)
            ok &= self._collect_polls(now)
        self._check_interval = check_interval
        self._mark("domains", ok, time.time() - start)

    def _later(self, key: str, submit: Callable[[], concurrent.futures.Future],
               handle: Callable[[concurrent.futures.Future], None], source: str) -> None:
        """Start a call on a worker unless one with this key is out; handle() gets it once it
        has answered, in a later cycle if need be: no call holds up the collection loop."""
        if key in self._later_calls:
            return
        try:
            self._later_calls[key] = (submit(), handle, source)
        except LibvirtUnavailable as exc:
            log.debug("%s: %s", key, exc)

    def _finish_later(self, timeout: float) -> None:
        if self._later_calls:
            concurrent.futures.wait([f for f, _, _ in self._later_calls.values()],
                                    timeout=timeout)
        for key, (future, handle, source) in list(self._later_calls.items()):
            if future.done():
                del self._later_calls[key]
                self._isolated(source, functools.partial(handle, future))

    def _got_states(self, future: concurrent.futures.Future) -> None:
        try:
            self._states = future.result()
            self._states_ok = True
        except Exception as exc:  # noqa: BLE001 - unreachable, or the connection broke
            log.warning("cannot list domains: %s", exc)
            self._states_ok = False

    def _collect_polls(self, now: float) -> bool:
        """Feed finished polls and checks to the tracker; a check that saw a change starts a
        full poll. False when a call failed."""
        ok = True
        for name, (kind, future) in list(self._pending.items()):
            if not future.done():
                if now - self._since.setdefault(name, now) > self.config["libvirt.timeout"]:
                    log.warning("libvirt has not answered a poll of %s for %.0f s", name,
                                now - self._since[name])
                    self._since[name] = now
                continue
            del self._pending[name]
            self._since.pop(name, None)
            cache = self._domains.get(name)
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001 - the domain vanished mid-poll, say
                log.debug("%s of %s failed: %s", kind, name, exc)
                ok = False
                continue
            if cache is None:
                continue
            if kind == "check":
                checked, control, _ms, count = result
                if (control == CONTROL_JOB or cache.poll is None
                        or count != len(cache.poll.snapshots) or self.tracker.is_busy(name)):
                    try:
                        self._pending[name] = ("poll", self.adapter.poll_domain(name))
                    except LibvirtUnavailable:
                        cache.next_check = 0.0
                else:
                    self._observe_answer(DomainUnchanged(checked, name))
                continue
            cache.poll, cache.uuid = result, result.uuid
            cache.version += 1
            cache.next_resync = now + RESYNC_SECONDS
            self._observe_answer(result)
            busy = self.tracker.is_busy(name)
            interval = self.config["collector.busy-interval"] if busy else self._check_interval
            cache.next_check = time.time() + interval
            if busy and cache.process is None:
                self._read_process(name, cache, now)
        return ok

    def _forget(self, name: str) -> None:
        self._domains.pop(name, None)
        self.adapter.forget_domain(name)
        self.contexts.forget_domain(name)
        self.store.operations.forget_domain(name)

    # --- guests, processes, host ------------------------------------------------------------

    def _collect_stats(self, now: float) -> None:
        self._stats_started = time.time()
        self._later("bulk_stats", self.adapter.bulk_stats, self._got_stats, "guests")
        self._read_host_side(now)

    def _read_host_side(self, now: float) -> None:
        """What this host knows of each domain: its QEMU process, its disks, their images.
        Per domain and per source: one whose figures cannot be read holds up nothing else."""
        start = time.time()
        for name, cache in self._domains.items():
            self._isolated("qemu_process", functools.partial(self._read_process, name, cache, now))
            self._refresh_disks(name, cache, now)
        self._mark("qemu_process", True, time.time() - start)
        start = time.time()
        for name, cache in self._domains.items():
            self._isolated("images", functools.partial(self._image_usage, name, cache))
        self._mark("images", True, time.time() - start)

    def _got_stats(self, future: concurrent.futures.Future) -> None:
        now = time.time()
        try:
            stats, ok = future.result(), True
        except Exception as exc:  # noqa: BLE001
            log.warning("guest statistics failed: %s", exc)
            stats, ok = {}, False
        for name, values in stats.items():
            cache = self._domains.get(name)
            if cache is None:
                continue
            # A snapshot holds the domain: NOWAIT skipped the guest's figures; keep the last.
            values = values.keeping_guest_figures(cache.stats)
            if values != cache.stats:
                cache.stats = values
                cache.version += 1
            self._cpu_ratio(cache, now, values)
        self._mark("guests", ok, now - self._stats_started)

    def _cpu_ratio(self, cache: _DomainCache, now: float, values: GuestStats) -> None:
        reading = cpu_reading(now, values)
        if reading is None:
            return
        if cache.cpu_sample is not None:
            ratio = cpu_ratio(cache.cpu_sample, reading)
            if ratio is not None:
                cache.cpu_ratio = ratio
        cache.cpu_sample = reading

    def _read_process(self, name: str, cache: _DomainCache, now: float) -> None:
        pid = cache.poll.pid if cache.poll is not None else None
        process = self.processes.read(pid) if pid else None
        if process != cache.process:
            cache.process = process
            cache.version += 1
        if cache.process is not None:
            self.contexts.add_process(name, now, cache.process)

    def _sample_busy_processes(self, now: float) -> None:
        for name, cache in self._domains.items():
            if self.tracker.is_busy(name):
                self._read_process(name, cache, now)

    def _refresh_disks(self, name: str, cache: _DomainCache, now: float) -> None:
        """Disk XML only while the domain is idle: from libvirt 11.0 it waits for a snapshot."""
        if self.tracker.is_busy(name) or now - cache.disks_read_at < DISK_REFRESH_SECONDS:
            return

        def got(future: concurrent.futures.Future) -> None:
            try:
                disks = tuple(future.result())
            except Exception as exc:  # noqa: BLE001
                log.debug("disks of %s: %s", name, exc)
                return
            cache.disks_read_at = now
            if disks != cache.disks:
                cache.disks = disks
                cache.version += 1

        self._later(f"xml:{name}", lambda: self.adapter.domain_disks(name), got, "domains")

    def _image_usage(self, name: str, cache: _DomainCache) -> None:
        paths = [d.source for d in cache.disks]
        if cache.poll is not None:
            paths += [s.memory_file for s in cache.poll.snapshots if s.memory_file]
        usage = image_usage(paths)
        if usage.errors:
            raise OSError(f"images of {name}: {'; '.join(usage.errors)}")
        if (cache.image_size, cache.filesystems) != (usage.size_bytes, usage.free_bytes):
            cache.image_size, cache.filesystems = usage.size_bytes, usage.free_bytes
            cache.version += 1

    def _sample_host(self) -> None:
        start = time.time()
        self._host_sample = None  # none rather than stale figures while the host source fails
        sample = self.host.read()
        self.contexts.add_host(sample)
        self._host_sample = sample
        if self.recorder is not None:
            self.recorder.note_host(sample)
        self._mark("host", True, time.time() - start)

    def _job_progress(self) -> None:
        for op in self.tracker.in_flight():
            if op.operation == "create" and op.kind == "external" and op.memory:
                progress = self.adapter.job_progress(op.domain)
                if progress is not None:
                    self.tracker.observe(progress)

    # --- operations -------------------------------------------------------------------------

    def _begin(self, op: Operation) -> None:
        cache = self._domains.get(op.domain, _DomainCache())
        used, total = self._guest_memory(cache)
        self.contexts.begin(op.key, op.domain, op.start, used, total, cache.cpu_ratio)
        if self.recorder is not None:
            self.recorder.begin(op.key, op.domain, op.start,
                                cache.poll.pid if cache.poll is not None else None,
                                [d.source for d in cache.disks if d.source.startswith("/")])

    def _guest_memory(self, cache: _DomainCache) -> tuple[int | None, int | None]:
        used = guest_memory_used(cache.stats, cache.process)
        return (used[0] if used else None), guest_memory_total(cache.stats)

    def _record(self, op: Operation) -> None:
        cache = self._domains.get(op.domain)
        record = finished_operation(
            op, self.contexts.finish(op.key),
            self._versions.hypervisor if self._versions else "",
            tuple(sorted({d.cache for d in cache.disks})) if cache else ())
        log.info("%s %s of %s/%s: %.3f s (%s, start by %s, end by %s)", op.outcome,
                 op.operation, op.domain, op.snapshot, record.duration_seconds, op.kind,
                 op.start_source, op.end_source)
        self.oplog.add(record)
        self.store.operations.record(record)
        if self.recorder is not None:
            self.recorder.end(op.key, record)

    def _on_trace(self, trace: Trace, record: FinishedOperation) -> None:
        """From the recorder's thread: judged by the loop, which owns the log."""
        self._traced.put((trace, record))
        self._events.wake()

    def _judge_traced(self) -> None:
        """The verdict on each operation whose trace is complete (POST_SECONDS after its end),
        against the rate this host's storage sustained in the operations logged before it."""
        while not self._traced.empty():
            trace, record = self._traced.get_nowait()
            entries, _ = self.oplog.page(0, self.oplog.size)
            rate = reference_rate(e for e in entries if e.id != record.id)
            try:
                judged = dataclasses.replace(record, verdict=judge(trace, record, rate))
            except Exception as exc:  # noqa: BLE001 - a trace it cannot judge: no verdict
                log.error("no verdict on %s of %s/%s: %s: %s", record.operation, record.domain,
                          record.snapshot, type(exc).__name__, exc)
                continue
            log.info("verdict on %s of %s/%s: %s (slowdown %s)", record.operation,
                     record.domain, record.snapshot, judged.verdict.pace_setter,
                     "unknown" if judged.verdict.slowdown is None
                     else f"{judged.verdict.slowdown:.2f}")
            if self.oplog.amend(judged):
                self.store.operations.judged(judged)

    # --- publishing -------------------------------------------------------------------------

    def _mark(self, name: str, success: bool, duration: float) -> None:
        if success and name in self._failed_this_cycle:
            return  # a step of this source failed earlier in the cycle: that stands
        if success and name in self._failing:
            self._failing.discard(name)
            log.info("collector %s works again", name)
        previous = self._status.get(name)
        last = time.time() if success else (previous.last_success if previous else None)
        self._status[name] = CollectorStatus(success, duration, last)

    def in_flight(self) -> list[InFlight]:
        """Copies: the tracker goes on changing its operations after the view is published."""
        items = []
        for op in self.tracker.in_flight():
            ctx = self.contexts.current(op.key)
            items.append(InFlight(copy.deepcopy(op), ctx.public() if ctx else {},
                                  progress_estimate(op, ctx)))
        return items

    def _publish(self) -> None:
        if self.recorder is not None:
            self.recorder.retain(op.key for op in self.tracker.in_flight())
        up = self._was_up and self.adapter.up
        domains = {}
        if up:
            for name, c in self._domains.items():
                if c.poll is None:
                    continue
                # The same object again when nothing changed: its rendered text stays cached.
                if c.view is None or c.view_version != c.version:
                    c.view = DomainView(
                        name=name, uuid=c.uuid, state=c.poll.state, reason=c.poll.reason,
                        stats=c.stats, disks=c.disks, process=c.process,
                        snapshots=c.poll.snapshots, image_size_bytes=c.image_size,
                        filesystems=c.filesystems,
                    )
                    c.view_version = c.version
                domains[name] = c.view
        self.store.publish(
            View(
                up=up, uri=self.adapter.uri, hostname=self.hostname, kernel=self.kernel,
                versions=self._versions, host=self._host_sample, domains=domains,
                in_flight=tuple(self.in_flight()), collectors=dict(self._status),
                reconnects=self.adapter.reconnects, events=dict(self.adapter.events_received),
                oplog_write_ok=self.oplog.last_write_ok,
                oplog_write_errors=self.oplog.write_errors,
                oplog_load_ok=self.oplog.load_ok,
                oplog_invalid_entries=self.oplog.invalid_entries,
            )
        )
        self._on_publish()

