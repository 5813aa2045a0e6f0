"""qcow2 metadata setting an operation's pace, made real on the local disk: a guest whose image
has 512-byte clusters, so each of the vmstate's writes also allocates clusters (L2 and refcount
updates). Measured here (libvirt 9.0 / QEMU 7.2, a 128 MiB guest with 64 MiB of random data):
creates of 15 and 9 s, QEMU writing 4.0x and 2.7x the guest's memory with its writers on the
CPU 69-77 % of the time, and a delete of 4 s with them on the CPU 94 %; on 64 KiB clusters the
same guest's snapshots take a fraction of a second."""

from __future__ import annotations

import subprocess
import time

import pytest
from lse_devtools import testbed
from lse_devtools.driving import operations

pytestmark = pytest.mark.libvirt


def judged(exporter, domain: str, count: int, since: float) -> list[dict]:
    """The operations once each has its verdict (its trace complete, 3 s after its end)."""
    return exporter.wait_for(
        lambda: len(ops := operations(exporter, domain, since)) >= count
        and all(o.get("verdict") for o in ops) and ops, 40, f"verdicts on {domain}")


def test_an_image_of_small_clusters_is_judged_qcow2_metadata(exporter, conn):
    guest = testbed.create_guest(conn, "qcow2meta", memory_mib=128, fill_mib=64, start=False)
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512",
                        str(guest.disk), "256M"], check=True)
        guest.domain(conn).create()
        guest.wait_ready()
        since = time.time()
        wall = testbed.create_snapshot(conn, guest, "small-clusters")
        dom = guest.domain(conn)
        dom.snapshotLookupByName("small-clusters").delete()
        create, delete = judged(exporter, guest.name, 2, since)
        assert (create["operation"], delete["operation"]) == ("create", "delete")
        assert wall > 3.0, wall  # 15 s measured; 64 KiB clusters: well under a second
        verdict = create["verdict"]
        assert verdict["figures"]["write_amplification"] >= 1.5, verdict
        assert verdict["pace_setter"] == "qcow2-metadata", verdict
        assert delete["verdict"]["pace_setter"] in ("qcow2-metadata", "unknown"), delete
        if delete["duration_seconds"] >= 2.0:  # enough samples to say (4 s measured)
            assert delete["verdict"]["pace_setter"] == "qcow2-metadata", delete
        # and so its metric says
        assert exporter.value("libvirt_snapshot_last_operation_verdict_info", domain=guest.name,
                              operation="create", pace_setter="qcow2-metadata") == 1
    finally:
        testbed.destroy_guest(conn, guest)
