"""The state a scrape reads: an immutable view, replaced whole by the collection loop.

A scrape takes the current view and renders it; it never calls libvirt and never waits for the
collection loop, so it answers at once however long a snapshot holds a domain.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from .host import HostSample
from .libvirt_adapter import DiskInfo, Versions
from .observations import SnapshotRecord
from .qemu_process import ProcessSample
from .tracker import Operation

# Histogram buckets from 0.1 s to 1 h: real snapshots take from under a second to over 30 min.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass(frozen=True)
class CollectorStatus:
    success: bool
    duration: float
    last_success: float | None


@dataclass(frozen=True)
class DomainView:
    name: str
    uuid: str
    state: int
    reason: int
    stats: dict[str, Any]
    disks: tuple[DiskInfo, ...]
    process: ProcessSample | None
    snapshots: tuple[SnapshotRecord, ...]
    image_size_bytes: int | None
    filesystems: dict[str, int]  # mountpoint -> free bytes


@dataclass(frozen=True)
class InFlight:
    operation: Operation
    context: dict[str, Any]
    progress_estimate: float | None


@dataclass
class Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(DURATION_BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.count += 1
        self.total += value


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
    collectors: dict[str, CollectorStatus]
    reconnects: int
    events: dict[str, int]
    oplog_write_ok: bool
    oplog_write_errors: int


class OperationStats:
    """Histograms and last-operation gauges, bounded to label sets that occurred."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.durations: dict[tuple[str, ...], Histogram] = {}
        self.paused: dict[tuple[str, ...], Histogram] = {}
        self.last: dict[tuple[str, str], dict[str, Any]] = {}

    def record(self, entry: dict[str, Any]) -> None:
        labels = (
            entry["domain"], entry["operation"], entry["kind"],
            "true" if entry["memory"] else "false", entry["outcome"],
        )
        with self._lock:
            self.durations.setdefault(labels, Histogram()).observe(entry["duration_seconds"])
            self.paused.setdefault(labels, Histogram()).observe(entry["paused_seconds"])
            self.last[(entry["domain"], entry["operation"])] = entry

    def forget_domain(self, domain: str) -> None:
        with self._lock:
            for table in (self.durations, self.paused, self.last):
                for key in [k for k in table if k[0] == domain]:
                    del table[key]

    def copy(self) -> tuple[dict, dict, dict]:
        with self._lock:
            return (
                {k: Histogram(list(h.buckets), h.count, h.total) for k, h in self.durations.items()},
                {k: Histogram(list(h.buckets), h.count, h.total) for k, h in self.paused.items()},
                dict(self.last),
            )


class StateStore:
    def __init__(self, initial: View) -> None:
        self._view = initial
        self.operations = OperationStats()

    @property
    def view(self) -> View:
        return self._view

    def publish(self, view: View) -> None:
        self._view = view  # one reference swap: readers see the old view or the new one
