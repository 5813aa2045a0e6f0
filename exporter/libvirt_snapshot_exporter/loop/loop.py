"""The collection loop: when each source runs, in what order its answers reach the tracker, and
the view published at the end of every cycle.

One thread does all collection; events from libvirt's event thread wake it at once. Domains
with an operation in flight (or a sign of one) are polled every busy-interval, the others every
idle check interval (domain_polls.py); guest statistics and process figures of idle domains
every stats-interval (sampling.py). Each source runs isolated (source_health.py).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable

from ..config import Config
from ..model.observations import (
    EVENT_DEFINED,
    DomainStatusSaved,
    LifecycleEvent,
    MetadataWatchState,
    Observation,
    Versions,
    to_record,
)
from ..model.operation import FinishedOperation
from ..sources.host import HostReader
from ..sources.libvirt.adapter import LibvirtAdapter
from ..sources.metadata_watch import MetadataWatch, default_directory
from ..sources.qemu_process import ProcessReader
from ..store.oplog import OperationsLog
from ..store.view import StateStore, View
from ..verdict.keeper import VerdictKeeper
from ..verdict.recorder import FlightRecorder
from .context_keeper import ContextKeeper
from .domain_cache import DomainCache, LoopParts
from .domain_polls import DomainPolls
from .handoff import OperationHandoff, in_flight
from .inbox import Inbox
from .sampling import Sampler
from .source_health import Source

log = logging.getLogger(__name__)

STOP_WAIT = 5.0  # seconds stop() waits for the loop, whatever libvirt is doing


class CollectionLoop:
    """Owns the sources, the tracker and what it hands operations to; publishes views to the
    store."""

    def __init__(self, config: Config, store: StateStore, oplog: OperationsLog,
                 on_publish: Callable[[], None] = lambda: None,
                 recorder: FlightRecorder | None = None,
                 rate_seed: tuple[FinishedOperation, ...] = ()) -> None:
        self.config = config
        self.recorder = recorder  # None: trace.operations is 0
        self.store = store
        self.oplog = oplog
        self._on_publish = on_publish
        self._inbox: Inbox[Observation] = Inbox()
        self.adapter = LibvirtAdapter(
            config["libvirt.uri"], self._inbox.put, config["libvirt.timeout"],
            config["libvirt.pid-directory"],
        )
        directory = config["libvirt.snapshot-directory"]
        self.watch = MetadataWatch(
            default_directory(config["libvirt.uri"]) if directory == "auto" else directory,
            config["libvirt.pid-directory"], self._inbox.put,
        )
        host = HostReader(config["path.procfs"])
        parts = LoopParts.on(self.adapter)
        self.domains, self.tracker = parts.domains, parts.tracker
        self.health, self.later = parts.health, parts.later
        self.contexts = ContextKeeper()
        self.polls = DomainPolls(parts, config, self._observe_answer, self._forget)
        self.sampler = Sampler(parts, host, ProcessReader(config["path.procfs"]), self.contexts,
                               recorder)
        self.handoff = OperationHandoff(self.contexts, oplog, store, recorder)
        self.verdicts = VerdictKeeper(oplog, store, self._inbox.wake, rate_seed)
        # node.hostname, else the name libvirtd reports once connected, else this host's.
        self.hostname = host.hostname(config["node.hostname"])
        self.kernel = host.kernel()
        self._versions: Versions | None = None
        self._was_up = False
        self._next_stats = 0.0
        if recorder is not None:
            recorder.on_trace = self.verdicts.traced
            self.verdicts.backfill(recorder.get)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collection-loop", daemon=True)

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
        self._inbox.wake()
        self._thread.join(timeout=STOP_WAIT)
        if self.recorder is not None:
            self.recorder.stop()  # finishes the traces of operations that ended
            self.verdicts.judge_traced()
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
        due = min((c.next_check for c in self.domains.values()), default=0.0)
        timeout = max(0.02, min(due, self._next_stats) - time.time())
        timeout = min(timeout, self.config["collector.poll-interval"])
        if self.polls.calls_out or self.later.calls_out:  # come back for their answers soon
            timeout = min(timeout, self.config["collector.busy-interval"])
        self._inbox.wait(timeout)

    # --- one cycle --------------------------------------------------------------------------

    def cycle(self) -> None:
        """One pass over every source; each runs isolated, so one that fails (bad host
        figures, a libvirt answer of the wrong shape) fails alone, and whatever happened the
        log is written and the view published."""
        self.health.new_cycle()
        try:
            self._collect()
            self.verdicts.judge_traced()
        finally:
            self.oplog.flush()
            self._publish()

    def _collect(self) -> None:
        self.health.run(Source.DOMAINS, self._drain_inbox)
        self.health.mark(Source.METADATA, self.watch.ok, 0.0)
        if self.recorder is not None:  # threads of their own: their state read here
            self.health.mark(Source.RECORDER, not self.recorder.failing, self.recorder.tick_seconds)
            if self.recorder.store is not None:
                self.health.mark(Source.TRACES, self.recorder.store.writable,
                                 self.recorder.store.write_seconds)
        if not self.adapter.ensure_connected():
            if self._was_up:
                log.warning("libvirt at %s unreachable: %s", self.adapter.uri,
                            self.adapter.last_error)
            self._was_up = False
            self.health.mark(Source.DOMAINS, False, 0.0)
            self.health.run(Source.HOST, self.sampler.sample_host)
            return
        if not self._was_up:
            self._on_connect()
        now = time.time()
        self.health.run(Source.DOMAINS, lambda: self.polls.poll(now))
        self.health.run(Source.DOMAINS, self._drain_inbox)
        self.health.run(Source.HOST, self.sampler.sample_host)
        if now >= self._next_stats:
            self._next_stats = now + self.config["collector.stats-interval"]
            self.sampler.sample_domains(now)
        else:
            self.health.run(Source.QEMU_PROCESS, lambda: self.sampler.sample_busy_processes(now))
            self.sampler.refresh_outdated_disks(now)
        self.later.finish(0.0)
        self.health.run(Source.DOMAINS, self.polls.job_progress)

    def _on_connect(self) -> None:
        self._was_up = True
        self.tracker.resync()
        try:
            self._versions = self.adapter.versions()
            if not self.config["node.hostname"]:
                self.hostname = self.adapter.hostname()
        except Exception as exc:  # noqa: BLE001 - any libvirt failure: retry next connect
            log.warning("cannot read versions and host name: %s", exc)
        self.polls.reset()  # its calls were on the old connection, as are these
        self.later.clear()
        self._next_stats = 0.0

    # --- the tracker ------------------------------------------------------------------------

    def _drain_inbox(self, until: float = math.inf) -> None:
        """Feed the queued events stamped up to `until` to the tracker; the domains they name
        are polled at once."""
        for obs in self._inbox.drain_until(until):
            # A status save is also the start of any job (a revert's, before its first event):
            # a poll then could take it for a delete. Nothing to poll for either of these.
            if not isinstance(obs, DomainStatusSaved | MetadataWatchState):
                self.polls.wake(obs.domain)
            if (isinstance(obs, LifecycleEvent) and obs.event == EVENT_DEFINED
                    and (cache := self.domains.get(obs.domain)) is not None):
                cache.defined_at = obs.time  # its XML, Nova's metadata with it, read anew
            self._observe(obs)

    def _observe_answer(self, obs: Observation) -> None:
        """A poll's answer goes to the tracker after the events stamped before it and before
        the later ones, which stay queued (see inbox.py)."""
        self._drain_inbox(obs.time)
        self._observe(obs)

    def _observe(self, obs: Observation) -> None:
        if log.isEnabledFor(logging.DEBUG):  # one replayable line (observations.from_record)
            log.debug("observation %s", json.dumps(to_record(obs)))
        # One domain's operations, not every domain's: an observation changes only its own
        # (all in flight, twice per observation, was quadratic in domains at every idle check).
        domain = getattr(obs, "domain", None)
        before = self.tracker.in_flight_on(domain) if domain is not None else None
        begun_before = before.id if before is not None else None
        finished = self.tracker.observe(obs)
        after = self.tracker.in_flight_on(domain) if domain is not None else None
        if after is not None and after.id != begun_before:
            self.handoff.begun(after, self.domains.get(after.domain, DomainCache()))
        qemu = self._versions.hypervisor if self._versions else ""
        for op in finished:
            cache = self.domains.get(op.domain, DomainCache())
            if op.id != begun_before:
                self.handoff.begun(op, cache)
            self.handoff.finished(op, cache, qemu)

    def _forget(self, domain: str) -> None:
        """A domain that is gone: its process samples and its per-domain operation figures."""
        self.contexts.forget_domain(domain)
        self.store.operations.forget_domain(domain)

    # --- publishing -------------------------------------------------------------------------

    def _publish(self) -> None:
        if self.recorder is not None:
            self.recorder.retain(op.id for op in self.tracker.in_flight())
        up = self._was_up and self.adapter.up
        domains = {}
        if up:
            for name, cache in self.domains.items():
                if (view := cache.view(name)) is not None:
                    domains[name] = view
        self.store.publish(
            View(
                up=up, uri=self.adapter.uri, hostname=self.hostname, kernel=self.kernel,
                versions=self._versions, host=self.sampler.host_sample, domains=domains,
                in_flight=tuple(in_flight(op, self.contexts.current(op.id))
                                for op in self.tracker.in_flight()),
                sources=self.health.statuses(),
                reconnects=self.adapter.reconnects, events=dict(self.adapter.events_received),
                oplog_write_ok=self.oplog.last_write_ok,
                oplog_write_errors=self.oplog.write_errors,
                oplog_load_ok=self.oplog.load_ok,
                oplog_invalid_entries=self.oplog.invalid_entries,
            )
        )
        self._on_publish()
