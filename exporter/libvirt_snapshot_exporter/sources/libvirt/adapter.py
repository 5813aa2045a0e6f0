"""The exporter's one module that talks to libvirt (bench has a read-write one of its own).

It keeps a read-only connection alive (keepalive, reconnect with backoff, event callbacks
registered again after every reconnect), turns events into observations, and offers polls that
never wait for a domain job: bulk stats with NOWAIT, state(), controlInfo(), snapshot listings.
Every call runs under a deadline, so a domain whose lock is held (an offline qemu-img snapshot)
cannot stall the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from ...model.observations import (
    BlockJobEvent,
    DomainDefinition,
    DomainPoll,
    GuestStats,
    JobCompletedEvent,
    JobProgress,
    LifecycleEvent,
    Observation,
    OpenStackInstance,
    SnapshotRecord,
    Versions,
)
from ...model.printable import printable
from ..qemu_process import read_qemu_pid
from .calls import Deadlines, LibvirtUnavailable
from .common import guest_stats, parse_domain_disks, read_versions, start_event_loop
from .nova_metadata import MalformedNovaMetadata, parse_nova_instance
from .snapshot_xml import parse_snapshot_xml

log = logging.getLogger(__name__)

NOWAIT_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BLOCK
)


class LibvirtAdapter:
    """A read-only libvirt connection that reports events and answers non-blocking polls."""

    def __init__(
        self,
        uri: str,
        on_observation: Callable[[Observation], None],
        call_timeout: float = 10.0,
        pid_directory: str = "/run/libvirt/qemu",
    ) -> None:
        self.uri = uri
        self._emit = on_observation
        self._timeout = call_timeout
        self._pid_dir = Path(pid_directory)
        self._conn: libvirt.virConnect | None = None
        self._side_conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._deadlines = Deadlines()
        self._backoff = 0.0
        self._next_attempt = 0.0
        # domain -> snapshot name -> its record: a poll replaces its own domain's, without
        # looking through every domain's (at 1,000 domains, 1-2 % of a core at idle)
        self._snapshot_cache: dict[str, dict[str, SnapshotRecord]] = {}
        self._handles: dict[str, libvirt.virDomain] = {}  # from the last states() call
        self._nova_complaints: dict[str, str] = {}  # domain -> what was logged of its metadata
        self.reconnects = 0
        self.last_error = ""
        self.events_received: dict[str, int] = {"lifecycle": 0, "job_completed": 0, "block_job": 0}
        start_event_loop()

    # --- connection -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        conn = self._conn
        return conn is not None and self._alive(conn)

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def ensure_connected(self) -> bool:
        """Connect or reconnect (with backoff up to 30 s); True when a live connection exists."""
        with self._lock:
            if self._conn is not None and self._alive(self._conn):
                return True
            self._drop_locked()
            now = time.monotonic()
            if now < self._next_attempt:
                return False
            try:
                conn = self._deadlines.call("connect", self._timeout, self._open)
            except Exception as exc:  # noqa: BLE001 - whatever the cause, not connected
                self.last_error = str(exc).strip() or type(exc).__name__
                self._backoff = min(30.0, max(0.5, self._backoff * 2))
                self._next_attempt = now + self._backoff
                log.warning("cannot connect to %s: %s (retry in %.1f s)", self.uri, self.last_error,
                            self._backoff)
                return False
            self._conn = conn
            self._backoff = 0.0
            self.reconnects += 1
            self.last_error = ""
            log.info("connected to %s", self.uri)
            return True

    def _open(self) -> libvirt.virConnect:
        conn = libvirt.openReadOnly(self.uri)
        try:
            try:
                conn.setKeepAlive(5, 3)
            except libvirt.libvirtError as exc:  # drivers without a daemon (test://)
                if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
            conn.registerCloseCallback(self._on_close, None)
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, self._on_job_completed, None
            )
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, self._on_block_job, None
            )
        except libvirt.libvirtError:
            conn.close()
            raise
        return conn

    def _drop_locked(self) -> None:
        for conn in (self._conn, self._side_conn):
            if conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.close()
        self._conn = self._side_conn = None

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: Any) -> None:
        log.warning("connection to %s closed (reason %d)", self.uri, reason)

    def close(self, wait: float = 2.0) -> None:
        """Close the connections, waiting at most `wait` seconds: a libvirtd that stopped
        answering (or a connect still waiting for it) must not hold up the exit."""

        def drop() -> None:
            with self._lock:
                self._drop_locked()

        closing = threading.Thread(target=drop, name="libvirt-close", daemon=True)
        closing.start()
        closing.join(wait)

    def _call(self, key: str, fn: Callable[[libvirt.virConnect], Any]) -> Any:
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable("not connected")
        try:
            return self._deadlines.call(key, self._timeout, lambda: fn(conn))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (
                libvirt.VIR_ERR_NO_DOMAIN,
                libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT,
                libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                raise
            if not self._alive(conn):
                raise LibvirtUnavailable(str(exc).strip()) from exc
            raise

    def _submit(self, key: str, fn: Callable[[libvirt.virConnect], Any]) -> concurrent.futures.Future:
        conn = self._conn
        if conn is None:
            raise LibvirtUnavailable("not connected")
        return self._deadlines.submit(key, lambda: fn(conn))

    # --- events -----------------------------------------------------------------------------

    def _on_lifecycle(self, _c: Any, dom: libvirt.virDomain, event: int, detail: int, _o: Any) -> None:
        self.events_received["lifecycle"] += 1
        self._emit(LifecycleEvent(time.time(), dom.name(), event, detail))

    def _on_job_completed(self, _c: Any, dom: libvirt.virDomain, params: dict, _o: Any) -> None:
        self.events_received["job_completed"] += 1
        self._emit(JobCompletedEvent(time.time(), dom.name(), dict(params)))

    def _on_block_job(
        self, _c: Any, dom: libvirt.virDomain, disk: str, job_type: int, status: int, _o: Any
    ) -> None:
        self.events_received["block_job"] += 1
        self._emit(BlockJobEvent(time.time(), dom.name(), disk, job_type, status))

    # --- polls ------------------------------------------------------------------------------

    def versions(self) -> Versions:
        return self._call("versions", read_versions)

    def hostname(self) -> str:
        """The host name libvirtd reports (virConnectGetHostname, allowed read-only): the
        hypervisor's own, also from inside a container, whose UTS namespace has its own name."""
        return self._call("hostname", lambda conn: conn.getHostname())

    def bulk_stats(self) -> concurrent.futures.Future:
        """One getAllDomainStats call with NOWAIT, started on a worker: a busy domain just lacks
        what needs QEMU. Its result: {domain: GuestStats}."""

        def read(conn: libvirt.virConnect) -> dict[str, GuestStats]:
            stats = conn.getAllDomainStats(
                NOWAIT_STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
            )
            return {dom.name(): guest_stats(values) for dom, values in stats}

        return self._submit("bulk_stats", read)

    def states(self) -> concurrent.futures.Future:
        """State and reason of every domain in one NOWAIT call, started on a worker: also the
        list of domains. NOWAIT or not, it waits while a revert or an offline snapshot holds
        a domain's lock. Its result: {domain: (state, reason)}."""

        def read(conn: libvirt.virConnect) -> dict[str, tuple[int, int]]:
            stats = conn.getAllDomainStats(
                libvirt.VIR_DOMAIN_STATS_STATE, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
            )
            found = {}
            for dom, values in stats:
                name = dom.name()
                self._handles[name] = dom
                found[name] = (values.get("state.state", 0), values.get("state.reason", 0))
            for gone in [n for n in self._handles if n not in found]:
                del self._handles[gone]
            return found

        return self._submit("states", read)

    def check_domain(self, name: str, active: bool) -> concurrent.futures.Future:
        """The cheap idle check, started on a worker: its result is (when it looked, control
        state, its milliseconds, snapshot count), two calls. A job shows in the control state;
        a finished create or delete in the count. Nothing ran up to the time it looked."""

        def read(_conn: libvirt.virConnect) -> tuple[float, int, int, int]:
            dom = self._handles[name]
            looked = time.time()
            control = (0, 0)
            if active:
                try:
                    info = dom.controlInfo()
                    control = (info[0], info[2])
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID,
                                                    libvirt.VIR_ERR_NO_SUPPORT):
                        raise
            return (looked, *control, dom.snapshotNum())

        return self._submit(f"poll:{name}", read)

    def poll_domain(self, name: str) -> concurrent.futures.Future:
        """state, controlInfo and the snapshot list of one domain, started on a worker: none of
        it waits for a job, but all of it waits while an offline snapshot or a revert holds the
        domain's lock, so the caller collects the result when it is there."""

        def read(conn: libvirt.virConnect) -> DomainPoll:
            dom = self._handles.get(name) or conn.lookupByName(name)
            state, reason = dom.state()
            control = [0, 0, 0]
            if state != libvirt.VIR_DOMAIN_SHUTOFF:
                try:
                    control = dom.controlInfo()
                except libvirt.libvirtError as exc:  # stopped between the two calls
                    if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID,
                                                    libvirt.VIR_ERR_NO_SUPPORT):
                        raise
            now = time.time()  # after the calls: a call may wait for the domain lock
            snapshots = self._snapshots(dom, name)
            return DomainPoll(
                time=now,
                domain=name,
                uuid=dom.UUIDString(),
                state=state,
                reason=reason,
                control_state=control[0],
                control_time_ms=control[2],
                snapshots=snapshots,
                pid=self.qemu_pid(name) if state != libvirt.VIR_DOMAIN_SHUTOFF else None,
                # under the domain's lock, no job: never waits for one
                managed_save=state == libvirt.VIR_DOMAIN_SHUTOFF and bool(dom.hasManagedSaveImage()),
            )

        return self._submit(f"poll:{name}", read)

    def _snapshots(self, dom: libvirt.virDomain, name: str) -> tuple[SnapshotRecord, ...]:
        # Not VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL: libvirt 9.0 fails that listing while a
        # create is in flight ("name in virGetDomainSnapshot must not be NULL").
        listed = dom.listAllSnapshots()
        try:
            current = dom.snapshotCurrent().getName()
        except libvirt.libvirtError:
            # None, or a create is setting it up: libvirt then answers with a nameless
            # snapshot; ask each snapshot instead.
            current = next((s.getName() for s in listed if _is_current(s)), None)
        known, kept = self._snapshot_cache.get(name, {}), {}
        for snap in listed:
            snap_name = snap.getName()
            cached = known.get(snap_name)
            if cached is None:
                try:
                    cached = parse_snapshot_xml(snap.getXMLDesc(0), current=False)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                        continue  # deleted between the listing and now
                    raise
            # the same record at every poll until its flag changes
            kept[snap_name] = _with_current(cached, snap_name == current)
        self._snapshot_cache[name] = kept
        return tuple(kept.values())

    def forget_domain(self, name: str) -> None:
        self._handles.pop(name, None)
        self._nova_complaints.pop(name, None)
        self._snapshot_cache.pop(name, None)

    def domain_definition(self, name: str) -> concurrent.futures.Future:
        """Disks and OpenStack instance from the domain XML, started on a worker; its result
        a DomainDefinition. From libvirt 11.0 this may wait for a running snapshot: ask only
        for idle domains."""

        def read(conn: libvirt.virConnect) -> DomainDefinition:
            xml = conn.lookupByName(name).XMLDesc(0)
            return DomainDefinition(tuple(parse_domain_disks(xml)), self._openstack(name, xml))

        return self._submit(f"xml:{name}", read)

    def _openstack(self, name: str, xml: str) -> OpenStackInstance | None:
        """Nova's instance in the XML; metadata that cannot be read is skipped, logged once per
        domain (again only when what is wrong with it changes), not at every read."""
        try:
            instance = parse_nova_instance(xml)
        except MalformedNovaMetadata as exc:
            if self._nova_complaints.get(name) != str(exc):
                self._nova_complaints[name] = str(exc)
                log.warning("OpenStack metadata of %s skipped: %s", printable(name),
                            printable(exc))
            return None
        self._nova_complaints.pop(name, None)
        return instance

    def qemu_pid(self, name: str) -> int | None:
        return read_qemu_pid(self._pid_dir, name)

    def job_progress(self, name: str) -> JobProgress | None:
        """Memory copied so far by an external snapshot. libvirt answers a job query only in that
        phase, so it is asked on a side connection under a short deadline."""

        def read() -> JobProgress | None:
            if self._side_conn is None or not self._alive(self._side_conn):
                self._side_conn = libvirt.openReadOnly(self.uri)
            stats = self._side_conn.lookupByName(name).jobStats()
            if stats.get("type", 0) == libvirt.VIR_DOMAIN_JOB_NONE:
                return None
            return JobProgress(
                time.time(), name, int(stats.get("memory_processed", 0)),
                int(stats.get("memory_remaining", 0)),
            )

        try:
            return self._deadlines.call(f"job:{name}", 0.5, read)
        except (LibvirtUnavailable, libvirt.libvirtError):
            return None


def _is_current(snap: libvirt.virDomainSnapshot) -> bool:
    try:
        return bool(snap.isCurrent())
    except libvirt.libvirtError:
        return False


def _with_current(record: SnapshotRecord, current: bool) -> SnapshotRecord:
    if record.current == current:
        return record
    return SnapshotRecord(**{**record.__dict__, "current": current})
