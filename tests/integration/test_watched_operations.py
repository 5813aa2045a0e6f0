"""The snapshot metadata watch against a real libvirtd: every end of a create, revert and delete
from libvirt's own files, timed against the API call's return; the directory unreadable."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import libvirt
import pytest
from lse_devtools import testbed
from lse_devtools.driving import Timed, wait_idle, wait_operations
from lse_devtools.exporter_proc import ExporterProcess

pytestmark = pytest.mark.libvirt

# Between the exporter's end (or start) of an operation and the client's own return (or call),
# in seconds. Measured on an idle 2-core machine: ends within 1-6 ms (the file is renamed
# just before the call returns), delete starts within 3 ms (the status save as the job begins).
# The bound leaves room for a loaded machine, where the inotify thread may wait for the CPU.
EDGE = 0.1


def _edges(op: dict, call: Timed) -> tuple[float, float]:
    return abs(op["start"] - call.start), abs(op["end"] - call.end)


@pytest.fixture
def guest(conn):
    g = testbed.create_guest(conn, "meta", memory_mib=256)
    yield g
    testbed.destroy_guest(conn, g)


def test_metadata_source_works(exporter):
    exporter.wait_for(lambda: exporter.value("libvirt_snapshot_exporter_collector_success",
                                             collector="metadata") == 1, 10, "metadata 1")


def test_create_revert_and_deletes_end_when_the_call_returns(exporter, guest, conn):
    dom = guest.domain(conn)
    wait_idle(exporter, guest.name)
    calls = []
    for name in ("m1", "m2", "m3"):
        calls.append(("create", name, Timed(lambda n=name: testbed.create_snapshot(
            conn, guest, n)).join()))
        time.sleep(1.5)  # an idle check between operations: the watch, not a fast poll, times them
    calls.append(("revert", "m1", Timed(
        lambda: dom.revertToSnapshot(dom.snapshotLookupByName("m1"))).join()))
    time.sleep(1.5)
    # The middle one of the chain m1 <- m2 <- m3 (its child is re-parented), then the leaf.
    for name in ("m2", "m3", "m1"):
        calls.append(("delete", name, Timed(lambda n=name: dom.snapshotLookupByName(n).delete())
                      .join()))
        time.sleep(1.5)
    ops = wait_operations(exporter, guest.name, len(calls), calls[0][2].start - 0.1)
    assert [(o["operation"], o["snapshot"]) for o in ops] == [(op, name) for op, name, _ in calls]
    report = []
    for op, (_, _, call) in zip(ops, calls, strict=True):
        assert call.error is None
        start_error, end_error = _edges(op, call)
        report.append(f"{op['operation']} {op['snapshot']}: wall {call.wall:.3f} s, start "
                      f"{start_error * 1000:.1f} ms ({op['start_source']}), end "
                      f"{end_error * 1000:.1f} ms ({op['end_source']})")
        assert op["outcome"] == "success"
        assert op["end_source"] in ("metadata", "event"), report
        assert end_error <= EDGE, report
        assert abs(op["duration_seconds"] - call.wall) <= EDGE, report
    print("\n".join(report))


def test_external_disk_only_create_and_delete_within_a_second_are_both_seen(exporter, guest, conn):
    dom = guest.domain(conn)
    wait_idle(exporter, guest.name)
    since = time.time()
    calls = []
    for n in range(5):
        name = f"quick{n}"
        xml = testbed.external_snapshot_xml(guest, name, memory=False)
        create = Timed(lambda x=xml: dom.snapshotCreateXML(
            x, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)).join()
        delete = Timed(lambda n=name: dom.snapshotLookupByName(n).delete()).join()
        assert create.error is None and delete.error is None
        print(f"{name}: create and delete in {delete.end - create.start:.3f} s")
        calls += [("create", name, create), ("delete", name, delete)]
        time.sleep(1.5)
    ops = wait_operations(exporter, guest.name, len(calls), since)
    assert [(o["operation"], o["snapshot"]) for o in ops] == [(op, name) for op, name, _ in calls]
    for op, (_, _, call) in zip(ops, calls, strict=True):
        assert op["kind"] == "external" and not op["memory"]
        assert abs(op["end"] - call.end) <= EDGE, (op, call.end)


def test_unreadable_directory_is_success_0_and_operations_still_tracked(libvirtd, guest, conn):
    top = Path(tempfile.mkdtemp(prefix="lse-meta-"))
    top.chmod(0o700)
    os.chown(top, 65534, 65534)  # another user's: unreadable without CAP_DAC_*
    exporter = ExporterProcess(
        f"--libvirt.snapshot-directory={top}",
        command_prefix=("setpriv", "--bounding-set=-dac_override,-dac_read_search",
                        "--inh-caps=-dac_override,-dac_read_search"),
    ).start()
    try:
        exporter.wait_for(lambda: exporter.value("libvirt_snapshot_exporter_collector_success",
                                                 collector="metadata") == 0, 10, "metadata 0")
        assert "Permission denied" in exporter.log()
        wait_idle(exporter, guest.name)
        since = time.time()
        testbed.create_snapshot(conn, guest, "blind")
        time.sleep(1.5)
        guest.domain(conn).snapshotLookupByName("blind").delete()
        ops = wait_operations(exporter, guest.name, 2, since)
        assert [(o["operation"], o["end_source"] != "metadata") for o in ops] == [
            ("create", True), ("delete", True)]
    finally:
        exporter.stop()
        top.rmdir()
