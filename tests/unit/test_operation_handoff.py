"""What becomes of an operation the tracker reports: its context starts from the guest's
figures when it begins; its record, once it ends, is in the log and the store, with what the
loop knows of its domain (QEMU's version, the disks' cache modes)."""

from __future__ import annotations

from libvirt_snapshot_exporter.loop.context_keeper import ContextKeeper
from libvirt_snapshot_exporter.loop.domain_cache import DomainCache
from libvirt_snapshot_exporter.loop.handoff import OperationHandoff
from libvirt_snapshot_exporter.model.observations import DiskInfo, GuestStats
from libvirt_snapshot_exporter.model.samples import HostSample
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.tracker.tracker import Operation

NOW = 1_800_000_000.0
GIB = 2**30


def handoff() -> OperationHandoff:
    store = StateStore(View.initial("test:///default"))
    return OperationHandoff(ContextKeeper(), OperationsLog(None), store, None)


def domain() -> DomainCache:
    cache = DomainCache(cpu_ratio=0.25, disks=(
        DiskInfo("vda", "/images/vm1.qcow2", "qcow2", "writeback"),
        DiskInfo("vdb", "/images/vm1-b.qcow2", "qcow2", "writeback")))
    cache.update_stats(NOW - 5, GuestStats(balloon_current_bytes=4 * GIB, available_bytes=4 * GIB,
                                           unused_bytes=3 * GIB))
    return cache


def test_an_operation_is_logged_with_its_context_and_its_domain():
    h, cache = handoff(), domain()
    op = Operation("vm1", "create", NOW, "control", 0.0, snapshot="s1", memory=True, depth=1)
    h.begun(op, cache)
    h.contexts.add_host(HostSample(NOW + 1, {"free": GIB, "available": 2 * GIB}, {}, {}, {}))
    op.end, op.end_source, op.outcome, op.paused_seconds = NOW + 2.5, "event", "success", 2.5
    h.finished(op, cache, "7.2.0")
    (entry,), total = h.oplog.page(0, 10)
    assert total == 1
    assert (entry.domain, entry.snapshot, entry.duration_seconds, entry.outcome) == \
        ("vm1", "s1", 2.5, "success")
    assert (entry.qemu_version, entry.disk_cache) == ("7.2.0", ("writeback",))
    assert (entry.guest_memory_used_bytes, entry.guest_memory_total_bytes) == (GIB, 4 * GIB)
    assert entry.guest_cpu_ratio == 0.25 and entry.host_memory_free_min_bytes == GIB
    assert h.store.operations.domains()["vm1"].last["create"] == entry
    assert h.contexts.active_keys() == []


def test_an_operation_of_a_domain_never_polled_is_logged_without_its_figures():
    h = handoff()
    op = Operation("gone", "delete", NOW, "poll", 0.5, snapshot="s1", end=NOW + 1,
                   end_source="poll", outcome="success")
    h.begun(op, DomainCache())
    h.finished(op, DomainCache(), "")
    (entry,), _ = h.oplog.page(0, 10)
    assert entry.disk_cache == () and entry.guest_memory_used_bytes is None
    assert entry.uncertainty_seconds == 0.5
