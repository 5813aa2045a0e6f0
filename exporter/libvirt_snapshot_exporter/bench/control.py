"""bench's own libvirt adapter: a read-write connection, the one module of bench that imports
libvirt.

The exporter itself stays read-only; only bench, which an operator runs on purpose, creates and
deletes snapshots, and saves and starts a domain to change its cache mode (cache_mode.py).
Everything here is a thin call with libvirt's errors turned into ControlError, so
bench.command can decide what to tell the operator. Versions, disks and the guest's figures
are read as the exporter reads them (libvirt_common, state), and the guest's pauses from
libvirt's lifecycle events, as the exporter times them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from ..model.guest import CpuReading, cpu_reading, guest_memory_total, guest_memory_used
from ..model.observations import DiskInfo, Versions
from ..model.samples import ProcessSample
from ..sources.libvirt.common import guest_stats, parse_domain_disks, read_versions, start_event_loop

STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
}
# libvirt 9.0 is the first that deletes external snapshots (block commit) itself.
EXTERNAL_DELETE_VERSION = 9_000_000


class ControlError(Exception):
    """A libvirt call failed; the message is libvirt's own, on one line."""


def _message(exc: libvirt.libvirtError) -> str:
    return " ".join(str(exc).split())


# The exporter's guest figures, asked for one domain and waiting for them.
GUEST_STATS = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
               | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU)


@dataclass(frozen=True)
class GuestReading(CpuReading):
    """Guest figures read between operations (the balloon's wait while a snapshot runs)."""

    memory_used_bytes: int | None
    memory_total_bytes: int | None
    memory_source: str  # balloon | qemu_rss | none


@dataclass(frozen=True)
class SnapshotPlan:
    """What one create asks libvirt for, and the files it makes (for cleanup and for the
    operator's instructions if bench is made to leave early)."""

    name: str
    xml: str
    flags: int
    memory_file: Path | None = None
    overlays: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def files(self) -> tuple[Path, ...]:
        return (*self.overlays, *([self.memory_file] if self.memory_file else []))


def plan_snapshot(domain: str, name: str, kind: str, live: bool, disks: list[DiskInfo]) -> SnapshotPlan:
    """Snapshot XML and flags for one level; external files go next to each disk image."""
    if kind == "internal":
        return SnapshotPlan(name, f"<domainsnapshot><name>{name}</name></domainsnapshot>", 0)
    overlays = tuple(Path(d.source).with_name(f"{domain}.{name}.{d.target}.qcow2") for d in disks)
    disks_xml = "".join(
        f"<disk name='{d.target}' snapshot='external'><source file='{path}'/></disk>"
        for d, path in zip(disks, overlays, strict=True)
    )
    flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    memory_file = None
    if kind == "disk-only":
        flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        memory = "<memory snapshot='no'/>"
    else:
        memory_file = Path(disks[0].source).with_name(f"{domain}.{name}.mem")
        memory = f"<memory snapshot='external' file='{memory_file}'/>"
        if live:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE
    xml = f"<domainsnapshot><name>{name}</name>{memory}<disks>{disks_xml}</disks></domainsnapshot>"
    return SnapshotPlan(name, xml, flags, memory_file, overlays)


# A guest's pause ends with any of these (a create resumes it; a failure may stop it).
PAUSE_ENDS = (libvirt.VIR_DOMAIN_EVENT_RESUMED, libvirt.VIR_DOMAIN_EVENT_STOPPED,
              libvirt.VIR_DOMAIN_EVENT_SHUTDOWN)


class Domain:
    """One domain on a read-write connection, its guest's pauses heard as they happen."""

    def __init__(self, dom: libvirt.virDomain) -> None:
        self._dom = dom
        self.name = dom.name()
        self._lock = threading.Lock()
        self._pauses: list[list[float | None]] = []  # [suspended, resumed or None]
        try:
            dom.connect().domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def _on_lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, _detail: int,
                      _opaque: Any) -> None:
        """From libvirt's event thread: the times the guest was paused and resumed."""
        if dom.name() != self.name:
            return
        now = time.time()
        with self._lock:
            open_pause = bool(self._pauses) and self._pauses[-1][1] is None
            if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and not open_pause:
                self._pauses.append([now, None])
            elif event in PAUSE_ENDS and open_pause:
                self._pauses[-1][1] = now

    def pauses(self) -> list[tuple[float, float | None]]:
        """(suspended, resumed) of each pause heard; resumed None while it lasts."""
        with self._lock:
            return [(start, end) for start, end in self._pauses]

    def state(self) -> str:
        try:
            return STATES.get(self._dom.state()[0], "other")
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def exists(self) -> bool:
        """False once someone else undefined the domain (or it was transient and stopped)."""
        try:
            self._dom.state()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise ControlError(_message(exc)) from exc
        return True

    def snapshot_names(self) -> list[str]:
        try:
            return sorted(s.getName() for s in self._dom.listAllSnapshots())
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def current_snapshot(self) -> str | None:
        try:
            if not self._dom.hasCurrentSnapshot():
                return None
            return self._dom.snapshotCurrent().getName()
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def disks(self, inactive: bool = False) -> list[DiskInfo]:
        """Disks of the running (or, with inactive, the persistent) definition."""
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        try:
            return parse_domain_disks(self._dom.XMLDesc(flags))
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def persistent(self) -> bool:
        try:
            return bool(self._dom.isPersistent())
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def definition(self) -> str:
        """The persistent definition (what a cache mode comparison must leave as found)."""
        try:
            return self._dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def save(self) -> str:
        """A managed save (the domain shut off, to start again running or paused as it was);
        returns the definition the save image holds, secrets included."""
        try:
            self._dom.managedSave(0)
            return self._dom.managedSaveGetXMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def start_saved(self, xml: str) -> None:
        """Start the domain from its managed save, with `xml` as its definition (libvirt
        refuses one that differs in what the guest sees)."""
        try:
            self._dom.managedSaveDefineXML(xml, 0)
            self._dom.create()
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def create(self, plan: SnapshotPlan) -> None:
        try:
            self._dom.snapshotCreateXML(plan.xml, plan.flags)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def memory_written(self) -> int | None:
        """The guest memory the last completed snapshot job wrote (an external memory
        snapshot's: libvirt's iohelper writes it, so QEMU's counters miss it). Call it right
        after such a create: an internal one leaves no completed job, so the figure is the
        last external one's."""
        try:
            stats = self._dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            return None
        if stats.get("operation") != libvirt.VIR_DOMAIN_JOB_OPERATION_SNAPSHOT:
            return None
        return stats.get("memory_processed")

    def delete(self, name: str) -> None:
        try:
            self._dom.snapshotLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def guest(self, now: float, process: ProcessSample | None) -> GuestReading | None:
        """CPU time and memory used, by the exporter's rules (balloon available - unused, else
        QEMU's RSS from `process`); None when shut off. Call only between operations: the
        balloon's figures wait for one."""
        try:
            ((_dom, stats),) = self._dom.connect().domainListGetStats([self._dom], GUEST_STATS)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc
        guest = guest_stats(stats)
        cpu = cpu_reading(now, guest)
        if stats.get("state.state") == libvirt.VIR_DOMAIN_SHUTOFF or cpu is None:
            return None
        used = guest_memory_used(guest, process)
        return GuestReading(cpu.time, cpu.cpu_time_ns, cpu.vcpus, used[0] if used else None,
                            guest_memory_total(guest), used[1] if used else "none")


class Control:
    """A read-write connection, opened for bench only."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        start_event_loop()  # before the connection: its events are wanted
        try:
            self._conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise ControlError(f"cannot connect to {uri}: {_message(exc)}") from exc

    def versions(self) -> Versions:
        try:
            return read_versions(self._conn)
        except libvirt.libvirtError as exc:
            raise ControlError(_message(exc)) from exc

    def domain(self, name: str) -> Domain:
        try:
            return Domain(self._conn.lookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise ControlError(f"no domain named {name!r} at {self.uri}") from exc
            raise ControlError(_message(exc)) from exc
