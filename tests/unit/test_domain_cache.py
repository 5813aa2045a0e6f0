"""What the loop knows of one domain: its version moves exactly when something published about
it changes, so its view (and the text rendered from it) is rebuilt only then."""

from __future__ import annotations

from libvirt_snapshot_exporter.loop.domain_cache import RESYNC_SECONDS, DomainCache
from libvirt_snapshot_exporter.model.observations import (
    DiskInfo,
    DomainPoll,
    GuestStats,
    OpenStackInstance,
    SnapshotRecord,
)
from libvirt_snapshot_exporter.model.samples import ProcessSample

NOW = 1_800_000_000.0
GIB = 2**30
SNAPSHOT = SnapshotRecord("s1", None, NOW - 60, "running", True, "external", True,
                          memory_file="/var/lib/libvirt/qemu/snapshot/vm1.s1.mem")
DISKS = (DiskInfo("vda", "/var/lib/libvirt/images/vm1.qcow2", "qcow2", "writeback"),
         DiskInfo("vdb", "/var/lib/libvirt/images/vm1-data.qcow2", "qcow2", "none"),
         DiskInfo("vdc", "pool/vm1-ceph", "raw", "writeback"))


def polled(snapshots: tuple[SnapshotRecord, ...] = (SNAPSHOT,), pid: int | None = 4242) -> DomainCache:
    cache = DomainCache()
    cache.update_poll(DomainPoll(NOW, "vm1", "uuid-1", 1, 1, 0, 0, snapshots, pid), NOW)
    return cache


def test_no_view_before_the_first_poll():
    assert DomainCache().view("vm1") is None


def test_the_view_is_the_same_object_until_something_changes():
    cache = polled()
    view = cache.view("vm1")
    assert (view.name, view.uuid, view.state, view.snapshots) == ("vm1", "uuid-1", 1, (SNAPSHOT,))
    cache.update_disks(DISKS, NOW, 4242)
    cache.update_process(None)  # none before, none now
    cache.update_images(None, {})
    assert cache.view("vm1") is not view and cache.view("vm1").disks == DISKS
    again = cache.view("vm1")
    cache.update_disks(DISKS, NOW + 60, 4242)  # read again, the same disks
    assert cache.view("vm1") is again and cache.disks_read_at == NOW + 60
    cache.update_images(3 * GIB, {"/": 10 * GIB})
    assert cache.view("vm1").image_size_bytes == 3 * GIB


def test_a_poll_that_shows_a_change_is_a_new_version_and_every_poll_puts_off_the_resync():
    cache = polled()
    assert cache.next_resync == NOW + RESYNC_SECONDS and cache.pid == 4242
    version, view = cache.version, cache.view("vm1")
    # The periodic full poll of an idle domain: a new object, nothing shown changed.
    cache.update_poll(DomainPoll(NOW + 60, "vm1", "uuid-1", 1, 1, 0, 0, (SNAPSHOT,), 4242),
                      NOW + 60)
    assert cache.version == version and cache.view("vm1") is view
    assert cache.next_resync == NOW + 60 + RESYNC_SECONDS and cache.poll.time == NOW + 60
    cache.update_poll(DomainPoll(NOW + 61, "vm1", "uuid-1", 3, 9, 1, 5, (), None), NOW + 61)
    assert cache.version == version + 1 and cache.view("vm1").reason == 9 and cache.pid is None


def test_the_first_polls_of_many_domains_spread_over_the_resync_period():
    resyncs = {DomainCache.first_seen(f"vm{i}", NOW).next_resync for i in range(100)}
    assert len(resyncs) > 90 and all(NOW <= r < NOW + RESYNC_SECONDS for r in resyncs)
    assert DomainCache.first_seen("vm1", NOW).next_resync == DomainCache.first_seen("vm1", NOW).next_resync


def test_guest_figures_skipped_by_nowait_are_kept_and_the_cpu_ratio_follows_cpu_time():
    cache = DomainCache()
    balloon = GuestStats(cpu_time_ns=10**9, vcpus=2, balloon_current_bytes=4 * GIB,
                         available_bytes=4 * GIB, unused_bytes=3 * GIB)
    cache.update_stats(NOW, balloon)
    assert cache.cpu_ratio is None  # one reading: no ratio yet
    held = GuestStats(cpu_time_ns=2 * 10**9, vcpus=2)  # a snapshot holds the domain
    cache.update_stats(NOW + 1, held)
    assert cache.stats.available_bytes == 4 * GIB and cache.stats.cpu_time_ns == 2 * 10**9
    assert cache.cpu_ratio == 0.5  # 1 s of CPU in 1 s over 2 vCPUs
    assert cache.guest_memory() == (GIB, 4 * GIB)
    version = cache.version
    cache.update_stats(NOW + 1, held)  # the same again
    assert cache.version == version


def test_guest_memory_falls_back_to_qemu_rss_without_a_balloon_driver():
    cache = DomainCache()
    assert cache.guest_memory() == (None, None)
    cache.update_process(ProcessSample(4242, 2 * GIB, 0, 0, "proc_io"))
    assert cache.guest_memory() == (2 * GIB, None)


def test_paths_of_disks_and_memory_files():
    cache = polled()
    cache.update_disks(DISKS, NOW, 4242)
    assert cache.image_paths() == [d.source for d in DISKS] + [SNAPSHOT.memory_file]
    assert cache.disk_sources() == [d.source for d in DISKS]  # a network disk's name too
    assert cache.disk_cache_modes() == ("none", "writeback")
    assert DomainCache().disk_cache_modes() == () and DomainCache().image_paths() == []


def test_disks_read_under_an_earlier_qemu_are_outdated_and_their_cache_modes_unknown():
    # A managed save's start (bench's cache switch) gives a new QEMU with other cache modes.
    cache = polled(pid=4242)
    cache.update_disks(DISKS, NOW, 4242)
    assert not cache.disks_outdated()
    cache.update_poll(DomainPoll(NOW + 5, "vm1", "uuid-1", 1, 3, 0, 0, (SNAPSHOT,), 5151), NOW + 5)
    assert cache.disks_outdated() and cache.disk_cache_modes() == ()
    assert cache.image_paths()[:3] == [d.source for d in DISKS]  # the files are still these
    cache.update_disks(DISKS[1:2], NOW + 6, 5151)
    assert not cache.disks_outdated() and cache.disk_cache_modes() == ("none",)


def test_a_redefinition_outdates_the_xml_not_the_cache_modes_of_the_running_qemu():
    """Nova defines a running instance again in its snapshot: the XML is read anew (its
    metadata may differ), while the disks' cache modes are still those QEMU runs with."""
    cache = polled(pid=4242)
    cache.update_disks(DISKS, NOW, 4242)
    assert not cache.xml_outdated()
    cache.defined_at = NOW + 1
    assert cache.xml_outdated() and not cache.disks_outdated()
    assert cache.disk_cache_modes() == ("none", "writeback")
    cache.update_disks(DISKS, NOW + 2, 4242)  # asked for after the definition
    assert not cache.xml_outdated()


def test_an_openstack_instance_is_published_and_a_change_of_it_is_a_new_version():
    cache = polled()
    view = cache.view("vm1")
    assert view.openstack is None
    cache.update_openstack(None)
    assert cache.view("vm1") is view
    cache.update_openstack(OpenStackInstance("web-1", "m1.small"))
    assert cache.view("vm1").openstack == OpenStackInstance("web-1", "m1.small")
    again = cache.view("vm1")
    cache.update_openstack(OpenStackInstance("web-1", "m1.small"))  # read again, the same
    assert cache.view("vm1") is again
