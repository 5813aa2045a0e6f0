"""A state.View built by hand, with every metric of the exposition in it: what the golden tests
render, and what tests/bundle/test_live_prometheus.py serves to a real Prometheus. No libvirt.

vm1 is a running guest (OpenStack's instance web-1) with three internal snapshots, an internal
create in flight, and `batches` batches of four finished creates (three of 50 s, one of 250 s;
4 s of guest pause each); vm2 is shut off, with one failed external disk-only delete and an
external memory snapshot in flight.
"""

from __future__ import annotations

import dataclasses
import time

from libvirt_snapshot_exporter.exposition.renderer import MetricsRenderer
from libvirt_snapshot_exporter.model.observations import (
    BlockStats,
    DiskInfo,
    GuestStats,
    OpenStackInstance,
    SnapshotRecord,
    Versions,
)
from libvirt_snapshot_exporter.model.operation import FinishedOperation, InFlight, OperationFacts, Verdict
from libvirt_snapshot_exporter.model.samples import HostSample, ProcessSample
from libvirt_snapshot_exporter.store.view import DomainView, SourceStatus, StateStore, View

GIB = 1024**3
IMAGES = "/var/lib/libvirt/images"
EXTERNAL_URL = "http://hv1.example:9966"  # web.external-url of the handbuilt exporter


def _snapshots(now: float) -> tuple[SnapshotRecord, ...]:
    names = ("s1", "s2", "s3")
    return tuple(
        SnapshotRecord(name, names[i - 1] if i else None, now - 86400 + i * 3600, "running",
                       True, "internal", current=name == "s3")
        for i, name in enumerate(names))


def _vm1(now: float, batches: int) -> DomainView:
    stats = GuestStats(
        cpu_time_ns=120 * 10**9 + batches * 10**9, vcpus=2,
        balloon_current_bytes=8 * GIB, balloon_maximum_bytes=8 * GIB,
        available_bytes=7 * GIB, usable_bytes=3 * GIB, unused_bytes=3 * GIB,
        swap_in_bytes=16 * 1024, swap_out_bytes=32 * 1024, major_faults=5,
        disks=(BlockStats("vda", 3 * 10**9, 7 * 10**9),),
    )
    return DomainView(
        name="vm1", uuid="00000000-0000-0000-0000-000000000001", state=1, reason=1,
        stats=stats, disks=(DiskInfo("vda", f"{IMAGES}/vm1.qcow2", "qcow2", "writeback"),),
        process=ProcessSample(4242, 5 * GIB, 10**9, 5 * 10**6 * batches, "proc_io"),
        snapshots=_snapshots(now), image_size_bytes=20 * GIB,
        filesystems={IMAGES: 5 * GIB},
        openstack=OpenStackInstance("web-1", "m1.small", "demo", "8d3c1a2b4e5f46a7b8c9d0e1f2a3b4c5",
                                    "alice", "2f0e1d2c3b4a49586776a5b4c3d2e1f0"),
    )


def _vm2() -> DomainView:
    return DomainView(
        name="vm2", uuid="00000000-0000-0000-0000-000000000002", state=5, reason=1,
        stats=GuestStats(), disks=(DiskInfo("vda", f"{IMAGES}/vm2.qcow2", "qcow2", "none"),),
        process=None, snapshots=(), image_size_bytes=None, filesystems={IMAGES: 5 * GIB},
    )


def _entry(domain: str, operation: str, duration: float, end: float,
           **fields) -> FinishedOperation:
    entry = {
        "domain": domain, "operation": operation, "kind": "internal", "memory": True,
        "depth": 3, "start": end - duration, "end": end, "duration_seconds": duration,
        "paused_seconds": 4.0,
        "outcome": "success", "host_memory_available_start_bytes": 2 * GIB,
        "host_memory_available_min_bytes": GIB, "host_memory_free_min_bytes": GIB // 8,
        "host_dirty_peak_bytes": GIB, "host_writeback_peak_bytes": GIB // 4,
        "qemu_written_bytes": 4 * GIB, "qemu_write_rate_bytes_per_second": 17179869,
        "memory_stall_seconds": 3.0, "io_stall_seconds": 30.0,
        "guest_memory_used_bytes": 4 * GIB, "guest_cpu_ratio": 0.5,
    }
    entry.update(fields)
    return FinishedOperation(**entry)


def _host(batches: int) -> HostSample:
    return HostSample(
        time=0.0,
        memory={"total": 16 * GIB, "free": GIB // 2, "available": GIB, "buffers": 1 << 20,
                "cached": 8 * GIB, "dirty": GIB // 4, "writeback": 0, "shmem": 1 << 26,
                "active_file": 4 * GIB, "inactive_file": 3 * GIB},
        vmstat={"pageout": 3 * 10**9, "dirtied": 2 * 10**9, "written": 10**6 * batches},
        dirty_limits={"dirty_ratio": 20, "dirty_background_ratio": 10, "dirty_bytes": 0,
                      "dirty_background_bytes": 0},
        pressure={"memory_some": 12.0, "memory_full": 6.0, "io_some": 40.0, "io_full": 20.0},
    )


def _in_flight(now: float) -> tuple[InFlight, ...]:
    create = InFlight("0123456789abcdef", OperationFacts("vm1", "create", now - 42, "control", 0.0,
                                                        snapshot="s4", memory=True),
                      progress_estimate=0.4)
    external = InFlight("fedcba9876543210", OperationFacts(
        "vm2", "create", now - 7, "job_completed", 0.0, snapshot="m1", kind="external",
        memory=True, memory_processed_bytes=GIB, memory_remaining_bytes=3 * GIB))
    return (create, external)


def exposition(since: float) -> bytes:
    """The exporter's own rendering of the view as it stands now, one batch of vm1's creates
    more for each second since `since` (vm1's create in flight has always run 42 s)."""
    now = time.time()
    return MetricsRenderer(store(now, batches=1 + int(now - since)), EXTERNAL_URL).render()[0]


def store(now: float, batches: int = 1) -> StateStore:
    """A StateStore holding the hand-built view and `batches` x 4 of vm1's creates."""
    view = View(
        up=True, uri="qemu:///system", hostname="hv1", kernel="6.1.0-test",
        versions=Versions("9.0.0", "9.0.0", "7.2.0", 9000000), host=_host(batches),
        domains={"vm1": _vm1(now, batches), "vm2": _vm2()}, in_flight=_in_flight(now),
        sources={
            name: SourceStatus(True, 0.004, now - 0.5)
            for name in ("domains", "guests", "host", "qemu_process", "images")
        },
        reconnects=1, events={"lifecycle": 12, "job_completed": 1, "block_job": 2},
        oplog_write_ok=True, oplog_write_errors=0,
    )
    result = StateStore(view)
    for _ in range(batches):
        for duration in (50.0, 50.0, 50.0, 250.0):
            result.operations.record(_entry("vm1", "create", duration, now - 600))
    slow = _entry("vm1", "create", 250.0, now - 600)
    result.operations.amended(dataclasses.replace(slow, verdict=Verdict(
        "storage-contended", 80.0, 3.125, {"storage-contended": 0.9, "cpu": 0.02},
        ("dirty-throttling",), {"device_utilisation": 0.97, "other_writers_share": 0.5})))
    result.operations.record(_entry(
        "vm2", "delete", 0.02, now - 3000, kind="external", memory=False, depth=1,
        paused_seconds=0.0, outcome="failure", qemu_written_bytes=None,
        qemu_write_rate_bytes_per_second=None, guest_memory_used_bytes=None,
        guest_cpu_ratio=None))
    # vm2's managed save and the start that restored it: the guest down 12.5 s
    result.operations.record(_entry("vm2", "save", 2.5, now - 2010, kind="managed", depth=None,
                                    paused_seconds=2.5))
    result.operations.record(_entry("vm2", "restore", 1.0, now - 2000, kind="managed", depth=None,
                                    paused_seconds=1.0, down_seconds=12.5))
    return result
