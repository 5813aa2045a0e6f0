"""The state a scrape reads: an immutable view, replaced whole by the collection loop.

A scrape takes the current view and renders it; it never calls libvirt and never waits for the
collection loop, so it answers at once however long a snapshot holds a domain.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field

from ..model.observations import DiskInfo, GuestStats, OpenStackInstance, SnapshotRecord, Versions
from ..model.operation import FinishedOperation, InFlight
from ..model.samples import HostSample, ProcessSample

# Histogram buckets from 0.1 s to 1 h: real snapshots take from under a second to over 30 min.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True)
class SourceStatus:
    success: bool
    duration: float
    last_success: float | None


@dataclass(frozen=True)
class DomainView:
    name: str
    uuid: str
    state: int
    reason: int
    stats: GuestStats
    disks: tuple[DiskInfo, ...]
    process: ProcessSample | None
    snapshots: tuple[SnapshotRecord, ...]
    image_size_bytes: int | None
    filesystems: dict[str, int]  # mountpoint -> free bytes
    openstack: OpenStackInstance | None = None  # Nova's instance, on an OpenStack host


@dataclass(frozen=True)
class Histogram:
    """Replaced, never changed. Its buckets are a tuple of ints, which the garbage collector
    stops tracking: at 1,000 domains, lists of them were a third of what a full pass visited."""

    buckets: tuple[int, ...] = (0,) * len(DURATION_BUCKETS)
    count: int = 0
    total: float = 0.0

    def observed(self, value: float) -> Histogram:
        counts = zip(self.buckets, DURATION_BUCKETS, strict=True)
        return Histogram(tuple(n + (value <= bound) for n, bound in counts),
                         self.count + 1, self.total + value)


@dataclass(frozen=True)
class View:
    up: bool
    uri: str
    hostname: str
    kernel: str
    versions: Versions | None
    host: HostSample | None
    domains: dict[str, DomainView]
    in_flight: tuple[InFlight, ...]
    sources: dict[str, SourceStatus]
    reconnects: int
    events: dict[str, int]
    oplog_write_ok: bool
    oplog_write_errors: int
    oplog_load_ok: bool = True
    oplog_invalid_entries: int = 0

    @classmethod
    def initial(cls, uri: str) -> View:
        """What a scrape finds before the first cycle: libvirt not up, nothing collected."""
        return cls(up=False, uri=uri, hostname="", kernel="", versions=None, host=None,
                   domains={}, in_flight=(), sources={}, reconnects=0, events={},
                   oplog_write_ok=True, oplog_write_errors=0)


# (operation, kind, memory, outcome): the labels of an operation's histograms, domain aside.
OperationLabels = tuple[str, str, str, str]
HistogramTable = dict[OperationLabels, Histogram]


def _observed(table: HistogramTable, labels: OperationLabels, value: float) -> HistogramTable:
    """A copy of table with value observed under labels (tables and their histograms are
    replaced, never changed, so a scrape may read the old one while the next is built, and
    the exposition keeps the text of every histogram that is still the same object)."""
    table = dict(table)
    table[labels] = table.get(labels, Histogram()).observed(value)
    # The other outcome's series starts at 0 beside it, so that increase() sees the first
    # failure (or success) as one, not as a series appearing.
    table.setdefault((*labels[:3], "failure" if labels[3] == "success" else "success"),
                     Histogram())
    return table


@dataclass(frozen=True)
class DomainOperations:
    domain: str
    version: int
    durations: HistogramTable
    paused: HistogramTable
    last: dict[str, FinishedOperation]  # by operation


@dataclass(frozen=True)
class HostOperations:
    """Every operation of the hypervisor, whatever its domain: where histograms are summed."""

    durations: HistogramTable
    paused: HistogramTable
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)  # (operation, pace)


class OperationStats:
    """Duration and paused-time histograms of finished operations, per domain and for the whole
    hypervisor, bounded to label sets that occurred, and each domain's last operations.

    Each domain's figures carry a version that changes when an operation of it is recorded,
    so its rendered exposition can be cached until then. The hypervisor's outlive the domains
    (an undefined domain's operations stay counted), so its counters never go back.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._domains: dict[str, DomainOperations] = {}
        self._host = HostOperations({}, {})

    def record(self, entry: FinishedOperation) -> None:
        labels = (entry.operation, entry.kind, "true" if entry.memory else "false",
                  entry.outcome)
        duration, paused = entry.duration_seconds, entry.paused_seconds or 0.0
        with self._lock:
            old = self._domains.get(entry.domain) or DomainOperations(entry.domain, 0, {}, {}, {})
            self._domains[entry.domain] = DomainOperations(
                old.domain, old.version + 1, _observed(old.durations, labels, duration),
                _observed(old.paused, labels, paused), {**old.last, entry.operation: entry})
            self._host = HostOperations(_observed(self._host.durations, labels, duration),
                                        _observed(self._host.paused, labels, paused),
                                        self._host.verdicts)

    def amended(self, entry: FinishedOperation) -> None:
        """An operation recorded before now is complete (its trace's figures, its verdict):
        its verdict counted for the hypervisor, and shown as its domain's last operation if
        it still is."""
        with self._lock:
            if entry.verdict is not None:
                key = (entry.operation, entry.verdict.pace_setter)
                self._host = dataclasses.replace(
                    self._host, verdicts={**self._host.verdicts,
                                          key: self._host.verdicts.get(key, 0) + 1})
            old = self._domains.get(entry.domain)
            last = old.last.get(entry.operation) if old else None
            if old is not None and last is not None and last.id == entry.id:
                self._domains[entry.domain] = dataclasses.replace(
                    old, version=old.version + 1, last={**old.last, entry.operation: entry})

    def forget_domain(self, domain: str) -> None:
        with self._lock:
            self._domains.pop(domain, None)

    def domains(self) -> dict[str, DomainOperations]:
        """An immutable snapshot: each value is replaced, never changed, by record()."""
        with self._lock:
            return dict(self._domains)

    @property
    def host(self) -> HostOperations:
        return self._host  # replaced whole by record()


class StateStore:
    def __init__(self, initial: View) -> None:
        self._view = initial
        self.operations = OperationStats()

    @property
    def view(self) -> View:
        return self._view

    def publish(self, view: View) -> None:
        self._view = view  # one reference swap: readers see the old view or the new one
