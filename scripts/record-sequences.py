#!/usr/bin/env python3
"""Record what the exporter's libvirt adapter observes during real snapshot operations.

Each scenario drives a real libvirtd (TCG guests from lse_devtools.testbed) with libvirt-python,
while the adapter polls the guest every 0.1 s and reports events. The observations, plus one
`ClientCall` line per operation with the client's own wall-clock start and end, are written as
JSON lines to tests/unit/sequences/<scenario>.jsonl. The tracker's unit tests replay them. The
exporter's metadata watch runs beside it: libvirt's snapshot files and status saves are in the
sequences too (LSE_SNAPSHOT_DIRECTORY and LSE_PID_DIRECTORY say where, for another libvirt).

Run as root on a machine where libvirtd runs (scripts/libvirtd-up.sh):
    .venv/bin/python scripts/record-sequences.py [SCENARIO ...]
Against another libvirt, set the tests' variables and a directory of its own, e.g. libvirt 11.3
in a chroot (scripts/libvirt11-chroot.sh):
    eval "$(bash scripts/libvirt11-chroot.sh env)"
    LSE_SEQUENCES_DIR=tests/unit/sequences-libvirt11 .venv/bin/python scripts/record-sequences.py
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
from libvirt_snapshot_exporter.model.observations import MetadataWatchState, to_record
from libvirt_snapshot_exporter.sources.libvirt.adapter import LibvirtAdapter
from libvirt_snapshot_exporter.sources.metadata_watch import MetadataWatch
from lse_devtools import testbed

ROOT = Path(__file__).resolve().parent.parent

# Sequences of another libvirt version go to a directory of their own.
OUT = Path(os.environ.get("LSE_SEQUENCES_DIR", ROOT / "tests" / "unit" / "sequences")).resolve()


class Recorder:
    """Polls one domain fast and collects observations and client-side call times."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.lines: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.adapter = LibvirtAdapter(testbed.URI, self._add,
                                      pid_directory=str(testbed.PID_DIRECTORY))
        assert self.adapter.ensure_connected()
        # The snapshot metadata and status files, as the exporter watches them.
        self.watch = MetadataWatch(str(testbed.SNAPSHOT_DIRECTORY), str(testbed.PID_DIRECTORY),
                                   self._add)
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _add(self, obs) -> None:
        if isinstance(obs, MetadataWatchState) or getattr(obs, "domain", None) == self.domain:
            with self._lock:
                self.lines.append(to_record(obs))

    def _poll(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self._add(self.adapter.poll_domain(self.domain).result(10))
            self._stop.wait(0.1)

    def __enter__(self) -> Recorder:
        self.watch.start()
        self._thread.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1.0)
        self._stop.set()
        self._thread.join()
        self.watch.stop()
        assert self.watch.ok, self.watch.reason
        self.adapter.close()

    def call(self, operation: str, fn: Callable[[], object], pause: float = 0.5) -> bool:
        start = time.time()
        ok, error = True, ""
        try:
            fn()
        except libvirt.libvirtError as exc:
            ok, error = False, str(exc)
        end = time.time()
        with self._lock:
            self.lines.append(
                {"type": "ClientCall", "domain": self.domain, "operation": operation,
                 "start": start, "end": end, "ok": ok, "error": error}
            )
        time.sleep(pause)
        return ok

    def save(self, scenario: str) -> None:
        self.lines.sort(key=lambda line: line.get("time", line.get("start", 0)))
        path = OUT / f"{scenario}.jsonl"
        path.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in self.lines))
        print(f"{scenario}: {len(self.lines)} lines -> {path}")


def internal_xml(name: str) -> str:
    return f"<domainsnapshot><name>{name}</name></domainsnapshot>"


def scenario_internal_chain(conn: libvirt.virConnect) -> None:
    """Three internal creates on a running guest, revert to level 1, delete all three."""
    guest = testbed.create_guest(conn, "rec", memory_mib=512, fill_mib=256)
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            for level in (1, 2, 3):
                rec.call("create", lambda n=f"s{level}": dom.snapshotCreateXML(internal_xml(n)))
            rec.call("revert", lambda: dom.revertToSnapshot(dom.snapshotLookupByName("s1")))
            for level in (3, 2, 1):
                rec.call("delete", lambda n=f"s{level}": dom.snapshotLookupByName(n).delete())
        rec.save("internal_chain_running")
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_offline(conn: libvirt.virConnect) -> None:
    """Internal create, revert and delete on a shut-off guest (qemu-img under the domain lock)."""
    guest = testbed.create_guest(conn, "rec", memory_mib=256, start=False)
    try:
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("off1")))
            rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("off2")))
            rec.call("revert", lambda: dom.revertToSnapshot(dom.snapshotLookupByName("off1")))
            rec.call("delete", lambda: dom.snapshotLookupByName("off2").delete())
            rec.call("delete", lambda: dom.snapshotLookupByName("off1").delete())
        rec.save("internal_offline")
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_external(conn: libvirt.virConnect) -> None:
    """External creates: with memory (not live, then live) and disk-only; then external delete."""
    guest = testbed.create_guest(conn, "rec", memory_mib=512, fill_mib=256)
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            xml = testbed.external_snapshot_xml
            rec.call("create", lambda: dom.snapshotCreateXML(xml(guest, "em", True)))
            rec.call("create", lambda: dom.snapshotCreateXML(
                xml(guest, "eml", True), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE))
            rec.call("create", lambda: dom.snapshotCreateXML(
                xml(guest, "ed", False), libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY))
            rec.call("delete", lambda: dom.snapshotLookupByName("ed").delete())
            rec.call("delete", lambda: dom.snapshotLookupByName("eml").delete())
        rec.save("external_running")
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_failure_disk_full(conn: libvirt.virConnect) -> None:
    """The qcow2 lives on a 200 MiB tmpfs; saving 512 MiB of random RAM fails mid-write."""
    mount = Path(tempfile.mkdtemp(prefix="lse-full-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)], check=True)
    guest = testbed.create_guest(conn, "rec", memory_mib=768, fill_mib=512, disk_dir=mount)
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("full")))
        rec.save("failure_disk_full")
    finally:
        testbed.destroy_guest(conn, guest)
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()


def scenario_killed_mid_create(conn: libvirt.virConnect) -> None:
    """The guest's QEMU is killed (SIGKILL) while an internal snapshot of it is being written.
    (`virsh destroy` would wait for the snapshot to finish first.)"""
    guest = testbed.create_guest(conn, "rec", memory_mib=1024, fill_mib=900)
    try:
        guest.wait_ready(timeout=240)
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            pid = testbed.qemu_pid(guest)
            # Early enough to be mid-write on QEMU 10 too (about 1.3 s for this guest there,
            # over 3 s on QEMU 7.2).
            killer = threading.Timer(0.7, lambda: os.kill(pid, signal.SIGKILL))
            killer.start()
            rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("doomed")))
            killer.join()
        rec.save("killed_mid_create")
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_destroyed_mid_create(conn: libvirt.virConnect) -> None:
    """`virsh destroy` while an internal snapshot of the guest is being written. Its SIGTERM
    ends QEMU either before the snapshot is written (the call fails) or after (the call
    succeeds, then the guest stops): on libvirt 9.0 / QEMU 7.2 2 runs in 9 succeeded, on
    11.3 / QEMU 10.0 none of 18. Tried up to 6 times for a success; the last run is kept."""
    for attempt in range(1, 7):
        ok, rec = _destroy_mid_create(conn)
        print(f"destroyed_mid_create: attempt {attempt}: the call {'succeeded' if ok else 'failed'}")
        if ok or attempt == 6:
            rec.save("destroyed_mid_create")
            return


def _destroy_mid_create(conn: libvirt.virConnect) -> tuple[bool, Recorder]:
    guest = testbed.create_guest(conn, "rec", memory_mib=768, fill_mib=512)
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            destroyer = threading.Timer(0.7, lambda: subprocess.run(
                ["virsh", "-c", testbed.URI, "destroy", guest.name], capture_output=True))
            destroyer.start()
            ok = rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("doomed")))
            destroyer.join()
        return ok, rec
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_saves(conn: libvirt.virConnect) -> None:
    """Saves and their restores between a create, a revert and a delete: three managed saves
    each with the start that restores it (bench switches cache modes so), then three saves to
    a file each with its restore. libvirt sends a restore's resume as RESUMED/FROM_SNAPSHOT,
    as it does a revert's."""
    guest = testbed.create_guest(conn, "rec", memory_mib=256, fill_mib=64)
    image = Path(tempfile.mkdtemp(prefix="lse-save-")) / "saved"
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            rec.call("create", lambda: dom.snapshotCreateXML(internal_xml("m1")))
            for _ in range(3):
                rec.call("save", dom.managedSave, pause=1.0)
                rec.call("restore", dom.create, pause=1.0)
            for _ in range(3):
                rec.call("save", lambda: dom.save(str(image)), pause=1.0)
                rec.call("restore", lambda: conn.restore(str(image)), pause=1.0)
                image.unlink()
            rec.call("revert", lambda: dom.revertToSnapshot(dom.snapshotLookupByName("m1")))
            rec.call("delete", lambda: dom.snapshotLookupByName("m1").delete())
        rec.save("saves")
    finally:
        testbed.destroy_guest(conn, guest)
        image.unlink(missing_ok=True)
        image.parent.rmdir()


def scenario_failed_saves(conn: libvirt.virConnect) -> None:
    """Saves libvirt fails (to a file in a directory that does not exist) of a running guest
    and of one its user paused, between the user's pause and resume; then a save of the paused
    guest that succeeds and its restore, which leaves it paused."""
    guest = testbed.create_guest(conn, "rec", memory_mib=256, fill_mib=64)
    image = Path(tempfile.mkdtemp(prefix="lse-save-")) / "saved"
    nowhere = str(image.parent / "missing" / "saved")
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            rec.call("save", lambda: dom.save(nowhere), pause=1.0)
            dom.suspend()
            time.sleep(1.0)
            rec.call("save", lambda: dom.save(nowhere), pause=1.0)
            rec.call("save", lambda: dom.save(str(image)), pause=1.0)
            rec.call("restore", lambda: conn.restore(str(image)), pause=1.0)
            dom.resume()
        rec.save("failed_saves")
    finally:
        testbed.destroy_guest(conn, guest)
        image.unlink(missing_ok=True)
        image.parent.rmdir()


def scenario_deletes(conn: libvirt.virConnect) -> None:
    """A chain of three internal snapshots; the middle one deleted, then the leaf, then the root."""
    guest = testbed.create_guest(conn, "rec", memory_mib=512, fill_mib=256)
    try:
        guest.wait_ready()
        dom = guest.domain(conn)
        for name in ("d1", "d2", "d3"):
            dom.snapshotCreateXML(internal_xml(name))
        with Recorder(guest.name) as rec:
            for name in ("d2", "d3", "d1"):
                rec.call("delete", lambda n=name: dom.snapshotLookupByName(n).delete())
        rec.save("deletes_middle_and_leaf")
    finally:
        testbed.destroy_guest(conn, guest)


def scenario_external_quick(conn: libvirt.virConnect) -> None:
    """Disk-only external creates each deleted at once: a create and a delete within a second."""
    guest = testbed.create_guest(conn, "rec", memory_mib=256)
    try:
        dom = guest.domain(conn)
        with Recorder(guest.name) as rec:
            for n in range(3):
                name = f"q{n}"
                rec.call("create", lambda n=name: dom.snapshotCreateXML(
                    testbed.external_snapshot_xml(guest, n, False),
                    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY), pause=0.0)
                rec.call("delete", lambda n=name: dom.snapshotLookupByName(n).delete())
        rec.save("external_quick")
    finally:
        testbed.destroy_guest(conn, guest)


SCENARIOS = {
    "internal_chain_running": scenario_internal_chain,
    "internal_offline": scenario_offline,
    "external_running": scenario_external,
    "failure_disk_full": scenario_failure_disk_full,
    "killed_mid_create": scenario_killed_mid_create,
    "destroyed_mid_create": scenario_destroyed_mid_create,
    "saves": scenario_saves,
    "failed_saves": scenario_failed_saves,
    "deletes_middle_and_leaf": scenario_deletes,
    "external_quick": scenario_external_quick,
}


def main() -> None:
    testbed.libvirtd_up()
    OUT.mkdir(parents=True, exist_ok=True)
    conn = libvirt.open(testbed.URI)
    for name in sys.argv[1:] or list(SCENARIOS):
        SCENARIOS[name](conn)


if __name__ == "__main__":
    main()
