"""The collection loop on libvirt's test driver in this process: what a cycle publishes, an
operation seen from its start to the log, a domain that goes, sources that fail alone, a
verdict handed back by the recorder's thread, and an event waking the running loop at once."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator

import psutil
import pytest
from libvirt_snapshot_exporter.config import build
from libvirt_snapshot_exporter.loop.loop import CollectionLoop
from libvirt_snapshot_exporter.sources.libvirt.nova_metadata import NOVA_NAMESPACE
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TRACE_DIRECTORY, TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict.recorder import FlightRecorder
from lse_devtools.handbuilt_trace import history, slow_create, slow_trace
from lse_devtools.test_driver import URI, guest_xml, running_guest, snapshot

SOURCES = ("domains", "guests", "host", "qemu_process", "images")


def make_loop(**flags: object) -> CollectionLoop:
    config = build({"libvirt_uri": URI, "state_directory": "", "collector_poll_interval": 0.2,
                    "collector_busy_interval": 0.1, **flags}, None)
    return CollectionLoop(config, StateStore(View.initial(URI)), OperationsLog(None))


@pytest.fixture
def loop() -> Iterator[CollectionLoop]:
    loop = make_loop()
    yield loop
    loop.adapter.close()  # cycled by hand, never started: nothing else to stop


def cycle_until(loop: CollectionLoop, done: Callable[[], object], seconds: float = 10) -> None:
    """Cycles as the running loop makes them, idle waits included, until done() holds."""
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "not within the time"
        loop.cycle()
        time.sleep(0.05)


def test_a_cycle_publishes_every_domain_and_every_source(loop):
    with running_guest() as dom:
        cycle_until(loop, lambda: set(SOURCES) <= set(loop.store.view.sources))
        view = loop.store.view
        assert view.up and view.versions is not None and view.hostname == dom.connect().getHostname()
        assert view.domains[dom.name()].state == 1 and view.domains[dom.name()].uuid == dom.UUIDString()
        assert {s: view.sources[s].success for s in SOURCES} == dict.fromkeys(SOURCES, True)
        assert view.host is not None and view.in_flight == ()


def test_an_operation_goes_from_the_tracker_to_the_log_and_the_store(loop):
    with running_guest() as dom:
        loop.cycle()
        snapshot(dom, "s1")
        cycle_until(loop, lambda: loop.oplog.page(0, 10)[1] == 1)
        dom.snapshotLookupByName("s1").delete()
        cycle_until(loop, lambda: loop.oplog.page(0, 10)[1] == 2)
        entries, _ = loop.oplog.page(0, 10)
        assert [(e.domain, e.snapshot, e.operation, e.outcome) for e in entries] == [
            (dom.name(), "s1", "delete", "success"), (dom.name(), "s1", "create", "success")]
        assert entries[1].kind == "internal" and entries[1].memory
        assert set(loop.store.operations.domains()[dom.name()].last) == {"create", "delete"}
        assert loop.store.view.domains[dom.name()].snapshots == ()


def test_a_domain_that_goes_leaves_the_view_and_its_figures(loop):
    with running_guest() as dom:
        name = dom.name()
        loop.cycle()
        snapshot(dom, "s1")
        cycle_until(loop, lambda: name in loop.store.operations.domains())
        dom.destroy()
        dom.undefineFlags(2)  # VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        cycle_until(loop, lambda: name not in loop.store.view.domains)
        assert name not in loop.domains and name not in loop.store.operations.domains()


def test_libvirt_unreachable_the_host_is_still_sampled():
    loop = make_loop(libvirt_uri="qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    loop.cycle()
    view = loop.store.view
    assert not view.up and view.domains == {}
    assert not view.sources["domains"].success and view.sources["host"].success


def test_host_figures_that_cannot_be_read_fail_the_host_source_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)  # the host reader sets it
    loop = make_loop(path_procfs=str(tmp_path))  # no meminfo there
    try:
        with running_guest() as dom:
            cycle_until(loop, lambda: dom.name() in loop.store.view.domains)
            view = loop.store.view
            assert view.host is None and not view.sources["host"].success
            assert view.sources["domains"].success
    finally:
        loop.adapter.close()


def test_a_trace_handed_back_is_judged_in_the_next_cycle(loop):
    for entry in [*history(), slow_create()]:
        loop.oplog.add(entry)
    loop.verdicts.traced(slow_trace(), slow_create())
    loop.cycle()
    (judged,) = [e for e in loop.oplog.page(0, 10)[0] if e.id == slow_create().id]
    assert judged.verdict.pace_setter == "storage-slow"


def test_an_event_wakes_the_running_loop_long_before_its_idle_check():
    loop = make_loop(collector_poll_interval=30, collector_stats_interval=30)
    with running_guest() as dom:
        loop.start()
        try:
            deadline = time.monotonic() + 10
            while dom.name() not in loop.store.view.domains:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            started = time.monotonic()
            dom.suspend()  # a SUSPENDED lifecycle event
            while loop.store.view.domains[dom.name()].state != 3:
                assert time.monotonic() - started < 5, "not woken by the event"
                time.sleep(0.02)
        finally:
            loop.stop()


def test_the_flight_recorder_and_the_trace_store_report_as_sources(tmp_path, monkeypatch):
    """Threads of their own, read by the loop each cycle: a recorder whose /proc reads fail and
    a trace store that cannot write set their own success to 0 and leave the others alone."""
    monkeypatch.setattr(psutil, "PROCFS_PATH", psutil.PROCFS_PATH)  # the host readers set it
    traces = TraceStore(str(tmp_path), 5, 2**22)
    recorder = FlightRecorder(str(tmp_path / "noproc"), str(tmp_path), traces)
    loop = CollectionLoop(make_loop().config, StateStore(View.initial(URI)), OperationsLog(None),
                          recorder=recorder)
    try:
        loop.cycle()
        health = loop.store.view.sources
        assert health["recorder"].success and health["traces"].success
        shutil.rmtree(tmp_path / TRACE_DIRECTORY, ignore_errors=True)  # made at the first write
        (tmp_path / TRACE_DIRECTORY).write_text("")  # a file where the directory was
        traces.add(slow_trace())
        recorder.start()
        recorder.begin("vm/1", "vm", time.time(), None, [])  # its thread reads noproc/meminfo
        deadline = time.monotonic() + 10
        while not recorder.failing:  # before a cycle, which drops a recording of no operation
            assert time.monotonic() < deadline, "the recorder's tick did not fail"
            time.sleep(0.01)
        loop.cycle()
        health = loop.store.view.sources
        assert not health["traces"].success and health["domains"].success
    finally:
        recorder.stop()
        loop.adapter.close()


def test_an_openstack_instance_follows_its_redefinition_at_once(loop):
    """Nova's metadata reaches the view and the log entry of an operation; a shut-off
    instance defined again with other metadata (Nova undefines and defines its domains) shows
    it within a few cycles, not at the XML's refresh a minute later, and without metadata it
    has no instance."""

    def nova(name: str) -> str:
        return (f'<nova:instance xmlns:nova="{NOVA_NAMESPACE}"><nova:name>{name}</nova:name>'
                f"</nova:instance>")

    with running_guest(metadata=nova("before")) as dom:
        name, conn = dom.name(), dom.connect()

        def shown() -> str | None:
            found = loop.store.view.domains.get(name)
            return found.openstack.name if found and found.openstack else None

        cycle_until(loop, lambda: shown() == "before")
        snapshot(dom, "s1")
        cycle_until(loop, lambda: loop.oplog.page(0, 10)[1] == 1)
        assert loop.oplog.page(0, 10)[0][0].instance_name == "before"
        dom.destroy()  # a running domain's definition is the live one until it stops
        conn.defineXML(guest_xml(name, metadata=nova("after"), domain_uuid=dom.UUIDString()))
        cycle_until(loop, lambda: shown() == "after", seconds=5)
        conn.defineXML(guest_xml(name, domain_uuid=dom.UUIDString()))
        cycle_until(loop, lambda: shown() is None, seconds=5)
