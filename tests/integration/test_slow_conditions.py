"""Issue 15's causes made real: each condition that can make a snapshot slow, induced on a real
guest whose disk lives on a slow-storage bed, and the exporter's verdict on it.

Two beds (the `bed` fixture is parametrized): `fuse`, a slow device
(40 MB/s, its utilisation real), and `throttled`, a fast device throttled above it by the
block layer (30 MB/s, as QoS-limited Ceph, SAN or cloud volumes are: the device's utilisation
reads a few percent while the writers wait on I/O nearly all the time). The conditions that
change the verdict's pace-setter (size, contention, CPU) run on both; those present that do not
set the pace (tight dirty limits, a memory hog) and the cache mode run on the FUSE bed only,
to keep CI short: their verdicts on the throttled bed were recorded (tests/unit/
traces-throttled) and are replayed by the unit tests. One bed, one guest and
one exporter at a time: the exporter's log holds that bed's snapshots alone, so the rate its
verdicts compare with is this device's, learned from the first snapshot (`teach`). Each test
takes one internal snapshot under its condition, waits for the verdict the collector keeps in
the log entry once the trace is complete, and asserts the pace-setter and the conditions the
measurements support (README, "The verdict"); each bound cites what was measured (on the FUSE
bed unless it says otherwise).

Several stressors change host-wide settings (dirty limits, CPU affinity and a real-time loop,
a memory hog): each puts the host back when its block fails (test_slow_storage.py checks it),
and the module must run alone, never beside other heavy tests.

LSE_RECORD_TRACES=tests/unit/traces writes each condition's log entry and trace there for the
FUSE bed, and into tests/unit/traces-throttled beside it for the throttled bed (with a revert
and an internal delete there too), for tests/unit/test_verdict_replay.py to replay.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from lse_devtools import stressors, testbed
from lse_devtools.driving import operations
from lse_devtools.exporter_proc import ExporterProcess
from lse_devtools.slow_storage import SlowStorage, diskstats, slow_guest, slow_storage, throttled_storage

# host_only: the conditions are the host's (its device, dirty limits, CPU, memory) and the
# verdict reads host figures; what libvirt 11.3 / QEMU 10.0 write under each was recorded in
# tests/unit/traces-libvirt11 and is replayed by tests/unit/test_verdict_replay.py, and the
# exporter's tracing under 11.3 runs live in test_flight_recording.py and test_operations.py.
# One snapshot per condition on a shared 2-core machine is a noisy measurement: on 2026-12-06
# this module failed 2 of 6 whole runs with the code of a19f527 and with this code alike (the
# competing writer under its share, the real-time CPU hog under its slowdown or with storage as
# busy as the CPU), every failing test passing when run again. Each test gets one more try; a
# condition judged wrong twice in a row fails.
pytestmark = [pytest.mark.libvirt, pytest.mark.host_only, pytest.mark.flaky(reruns=1)]

MiB = 1 << 20
VERDICT_SECONDS = 30  # the trace's after part (3 s) and a collection cycle, with room
TOLERANCE = 0.5  # seconds between the exporter's duration and the client's, as in test_operations
RECORD = os.environ.get("LSE_RECORD_TRACES")


@dataclass(frozen=True)
class Kind:
    """One kind of bed: how it is made and what its snapshots are expected to write."""

    storage: Callable[..., contextlib.AbstractContextManager[SlowStorage]]
    rate: float  # bytes per second the bed writes
    guest: dict  # the guests' memory and random data
    min_vmstate: float  # bytes an internal create of that guest writes at least
    traces: str  # where LSE_RECORD_TRACES=DIR records it: DIR with this suffix


KINDS = {
    # A vmstate of 345-355 MB: 9 s at 40 MB/s.
    "fuse": Kind(slow_storage, 40e6, {"memory_mib": 512, "fill_mib": 256}, 250e6, ""),
    # Throttled by the block layer above a fast loop device: a smaller guest keeps the bed's
    # time in CI in check, its vmstate of about 215 MB still 7 s at 30 MB/s.
    "throttled": Kind(throttled_storage, 30e6, {"memory_mib": 512, "fill_mib": 128}, 150e6,
                      "-throttled"),
}


@dataclass(frozen=True)
class Taken:
    """One snapshot as the client, the device and the exporter saw it."""

    wall: float
    qemu_bytes: int  # /proc/PID/io write_bytes over the create, read by the test
    device_bytes: int
    utilisation: float  # the device's io_ticks over the create, read by the test
    entry: dict  # the exporter's log entry, its verdict in it

    @property
    def verdict(self) -> dict:
        return self.entry["verdict"]

    @property
    def figures(self) -> dict:
        return self.entry["verdict"]["figures"]


@dataclass
class Bed:
    conn: libvirt.virConnect
    exporter: ExporterProcess
    storage: SlowStorage
    guest: testbed.Guest
    name: str  # "fuse" or "throttled"
    kind: Kind
    teach: Taken | None = None  # the first snapshot, no stressor: what taught the rate

    @property
    def rate(self) -> float:
        return self.kind.rate

    def snapshot(self, name: str, stressor: contextlib.AbstractContextManager | None = None,
                 guest: testbed.Guest | None = None, keep: bool = False) -> Taken:
        """One internal snapshot under the stressor (at work 2 s before it, stopped once it
        ends), judged by the exporter, then deleted unless kept."""
        guest = guest or self.guest
        settle()
        with stressor or contextlib.nullcontext():
            if stressor:
                time.sleep(2)
            pid, before = testbed.qemu_pid(guest), diskstats(self.storage.device)
            since, written = time.time(), qemu_write_bytes(pid)
            wall = testbed.create_snapshot(self.conn, guest, name)
            written = qemu_write_bytes(pid) - written
            after = diskstats(self.storage.device)
        device = (after["sectors_written"] - before["sectors_written"]) * 512
        busy = (after["io_ticks_ms"] - before["io_ticks_ms"]) / 1000 / max(wall, 1e-3)
        entry = self.judged(guest, name, "create", since)
        if not keep:
            guest.domain(self.conn).snapshotLookupByName(name).delete()
        v = entry["verdict"]
        print(f"[{self.name}] {name}: {wall:.1f} s, QEMU wrote {written / 1e6:.0f} MB (logged "
              f"{entry['qemu_written_bytes'] / 1e6:.0f}), the device {device / 1e6:.0f} MB, "
              f"busy {busy:.3f}: {v['pace_setter']} (slowdown {v['slowdown']}), shares "
              f"{v['shares']}, present {v['present']}, figures {v['figures']}")
        self.record(name, entry)
        return Taken(wall, written, device, busy, entry)

    def judged(self, guest: testbed.Guest, name: str, operation: str, since: float) -> dict:
        """The exporter's log entry of that operation once it has its verdict; refuses to go on
        if the exporter logged other runs' creates."""

        def found() -> dict | None:
            return next((o for o in operations(self.exporter, guest.name, since)
                         if o["snapshot"] == name and o["operation"] == operation
                         and o["verdict"]), None)

        entry = self.exporter.wait_for(found, VERDICT_SECONDS, f"the verdict on {operation} {name}")
        foreign = foreign_creates(self.exporter)
        assert not foreign, (f"the exporter logged creates of {sorted(foreign)}, whose rates it "
                             "learns too: run this module alone")
        return entry

    def record(self, name: str, entry: dict) -> None:
        """With LSE_RECORD_TRACES: the entry and its trace, as test_verdict_replay reads them."""
        if not RECORD:
            return
        directory = Path(f"{RECORD.rstrip('/')}{self.kind.traces}")
        directory.mkdir(exist_ok=True)
        trace = json.loads(self.exporter.get(f"/api/operations/{entry['id']}/trace"))
        versions = {"libvirt": self.conn.getLibVersion(), "qemu": entry["qemu_version"]}
        (directory / f"{name}.json").write_text(json.dumps(
            {"condition": name, "recorded": time.strftime("%Y-%m-%d"), **versions,
             "entry": entry, "trace": trace}, separators=(",", ":")) + "\n")


def qemu_write_bytes(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/io").read_text().splitlines()
                if x.startswith("write_bytes:"))
    return int(line.split()[1])


def foreign_creates(exporter: ExporterProcess) -> set[str]:
    """Domains not of this run (their names carry the pid that created them) whose creates the
    exporter logged: the rate it learns is the host's, from every domain's snapshots."""
    logged = json.loads(exporter.get("/api/operations"))["operations"]
    return {o["domain"] for o in logged
            if o["operation"] == "create" and f"-{os.getpid()}-" not in o["domain"]}


def settle(timeout: float = 60.0) -> None:
    """The last snapshot's dirty data drained, so each starts alike."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mem = {line.split(":")[0]: int(line.split()[1]) << 10
               for line in Path("/proc/meminfo").read_text().splitlines()}
        if mem["Dirty"] + mem["Writeback"] < 16 * MiB:
            return
        time.sleep(0.5)


@pytest.fixture(scope="module", params=list(KINDS))
def bed(request, libvirtd) -> Iterator[Bed]:
    """A bed of each kind in turn, with a guest and an exporter of its own."""
    conn, kind = libvirtd.get(), KINDS[request.param]
    exporter = ExporterProcess().start()
    try:
        with (kind.storage(size_mib=1536, rate=kind.rate) as storage,
              slow_guest(conn, storage, "cond", **kind.guest) as guest):
            bed = Bed(conn, exporter, storage, guest, request.param, kind)
            bed.teach = bed.snapshot("teach")  # this device's rate, for the verdicts after it
            yield bed
    finally:
        exporter.stop()


def only_on(bed: Bed, name: str) -> None:
    if bed.name != name:
        pytest.skip(f"on the {name} bed only")


def test_size_at_the_device_rate(bed):
    """No stressor: the snapshot goes at its bytes / the device's rate, which is the rate the
    exporter learned, and the verdict is its size."""
    taken = bed.snapshot("size")
    written, rate = taken.qemu_bytes, taken.figures["reference_rate_bytes_per_second"]
    expected = written / bed.rate
    # Measured over 8 runs: 352-355 MB in 9.3-9.6 s (1.06-1.09 x bytes / rate;
    # benchmarks/slow_conditions.py: 635 MB in 17.0 s, 1.07 x), a learned rate of 34.7-39.1 MB/s
    # (20.7 once, when the log missed part of the first snapshot's bytes on a loaded machine:
    # README, "Limits"); the local disk's would be 300 MB/s and more. Room for a loaded machine.
    # Throttled bed, 3 runs on 2026-12-06: 212-220 MB in 7.3-7.5 s, the device busy 1 % of it,
    # 0.96-1.00x at a learned 28.7-28.8 MB/s.
    assert written > bed.kind.min_vmstate, written
    assert taken.device_bytes >= 0.9 * written, (taken.device_bytes, written)
    assert 0.8 * expected <= taken.wall <= 2 * expected + 3, (taken.wall, expected)
    assert abs(taken.entry["duration_seconds"] - taken.wall) <= TOLERANCE, taken.entry
    assert 0.25 * bed.rate <= rate <= 1.05 * bed.rate, rate
    assert taken.verdict["pace_setter"] == "size", taken.verdict
    assert not {"dirty-throttling", "memory-pressure"} & set(taken.verdict["present"]), taken.verdict


def test_tight_dirty_limits_are_present_the_pace_is_still_size(bed):
    only_on(bed, "fuse")
    taken = bed.snapshot("dirty-limits", stressors.dirty_limits(64 * MiB, 16 * MiB))
    # Measured over 8 runs: the writers in balance_dirty_pages 55-64 % of the time, Dirty at
    # most 23 MiB, 0.76-0.94 x the expected. Throttled bed, 3 runs: 65-67 %, 0.96-0.97x.
    assert taken.verdict["pace_setter"] == "size", taken.verdict
    assert "dirty-throttling" in taken.verdict["present"], taken.verdict
    assert taken.figures["writer_throttled_share"] >= 0.25, taken.figures


def test_memory_hog_reclaim_is_present_not_memory_pressure(bed):
    # All free memory but 256 MiB taken, the page cache left: the snapshot's writes must reclaim
    # it (leaving 3 GiB of MemAvailable, as benchmarks/slow_conditions.py does, left up to
    # 0.9 GiB free: nothing was reclaimed in 2 runs of 3).
    only_on(bed, "fuse")
    taken = bed.snapshot("memory-hog", stressors.memory_hog(256 * MiB, keep="MemFree"))
    # Measured over 5 runs: kswapd scanned 92-183k pages, tasks reclaimed directly in 4; PSI
    # memory at most 2.2 %; 0.92-1.04 x the expected. 2026-12-06, 3 runs on each bed: size,
    # 0.96-1.0x, kswapd reclaiming in 4 (with the hog in the huge page pool in both), a writer
    # reclaiming directly in 2 (the throttled bed, the hog anonymous).
    assert taken.verdict["pace_setter"] == "size", taken.verdict
    assert {"direct-reclaim", "kswapd-reclaim"} & set(taken.verdict["present"]), taken.verdict
    assert "memory-pressure" not in taken.verdict["present"], taken.verdict


def test_competing_writer_is_contention_with_its_share(bed):
    taken = bed.snapshot("competing-writer", stressors.competing_writer(bed.storage.directory, 256))
    # Measured over 8 runs: 2.71-2.97 x slower, the other writer 56-65 % of the device's bytes
    # (2.0-3.3 x, 57-72 % for a 1 GiB guest), the device busy 99.8 % of the time or more.
    # Throttled bed, 3 runs: 3.11-3.15x, others 70 %, the device busy 1.3-3.7 % of the time.
    assert taken.verdict["pace_setter"] == "storage-contended", taken.verdict
    assert taken.figures["other_writers_share"] >= 0.4, taken.figures
    assert taken.verdict["slowdown"] >= 1.6, taken.verdict


def test_rt_cpu_hog_is_cpu_starvation(bed):
    taken = bed.snapshot("rt-cpu-hog", stressors.rt_cpu_hog(testbed.qemu_pid(bed.guest)))
    # Measured over 8 runs: 1.76-2.11 x slower, the writers' run delay 14-23 s in 17-21 s
    # (summed over threads), the device busy 51-59 % of the time: `cpu`. 2026-12-06, 5 runs on
    # a busier machine: 4 `cpu` (1.59x, shares cpu 0.76-1.0, storage 0.23-0.31) and one, in a
    # full CI run, 2.27x with the device busy 67 % and the writers on it 62 % of their samples:
    # `mixed`, cpu 0.61 ahead of storage 0.42 (within MIXED_RATIO); another `mixed`, cpu 0.49 and
    # storage 0.47. The CPU must lead either way.
    # Another run that day: 1.43x, cpu 0.90.
    # Throttled bed, 4 tries in 3 runs on 2026-12-06 with #21's verdict (storage waits counted
    # without the device's utilisation): `cpu` 1.58x (storage 0.20); `mixed` 1.52x, cpu 0.70
    # ahead of storage 0.61; twice `mixed` 1.40-1.41x with storage AHEAD (cpu 0.62, storage
    # 0.64 and 0.73): the snapshot's bytes still wait 7 s on the throttle at 30 MB/s while the
    # CPU adds 3-4 s, and this test failed on that bed in that run.
    verdict = taken.verdict
    shares = verdict["shares"]
    assert verdict["pace_setter"] in ("cpu", "mixed"), verdict
    assert max(shares, key=shares.get) == "cpu", verdict
    assert verdict["slowdown"] >= 1.3, verdict


def test_cache_none_is_the_cache_mode(bed):
    only_on(bed, "fuse")
    with slow_guest(bed.conn, bed.storage, "nocache", disk_cache="none", **bed.kind.guest) as guest:
        taken = bed.snapshot("cache-none", guest=guest)
    # Measured over 8 runs: 1.24-1.27 x the bytes of the same guest with cache=writeback, in
    # 1.20-1.31 x the time, at 0.97-1.02 x the usual rate per byte; the workers waiting in
    # __iomap_dio_rw in 65-93 % of their samples. Throttled bed, 3 runs: 1.23-1.25x the bytes,
    # 0.95-0.96x per byte.
    bytes_ratio = taken.qemu_bytes / bed.teach.qemu_bytes
    assert bytes_ratio >= 1.1, bytes_ratio
    assert taken.verdict["pace_setter"] == "cache-mode", taken.verdict


def test_revert_and_delete_are_judged(bed):
    """A revert to the snapshot just taken, with its memory, and the internal delete of that
    snapshot: each logged with a verdict (and recorded as revert.json and delete.json, so
    reverts and deletes can be replayed)."""
    only_on(bed, "throttled")
    bed.snapshot("revert-base", keep=True)
    dom = bed.guest.domain(bed.conn)
    settle()
    since, start = time.time(), time.monotonic()
    dom.revertToSnapshot(dom.snapshotLookupByName("revert-base"))
    revert_wall = time.monotonic() - start
    revert = bed.judged(bed.guest, "revert-base", "revert", since)
    since, start = time.time(), time.monotonic()
    dom.snapshotLookupByName("revert-base").delete()
    delete_wall = time.monotonic() - start
    delete = bed.judged(bed.guest, "revert-base", "delete", since)
    for name, wall, entry in (("revert", revert_wall, revert), ("delete", delete_wall, delete)):
        v = entry["verdict"]
        print(f"[{bed.name}] {name}: {wall:.2f} s (logged {entry['duration_seconds']}): "
              f"{v['pace_setter']} (slowdown {v['slowdown']}), shares {v['shares']}, "
              f"present {v['present']}, figures {v['figures']}")
        bed.record(name, entry)
        assert entry["outcome"] == "success", entry
        assert abs(entry["duration_seconds"] - wall) <= TOLERANCE, (wall, entry)
    assert dom.isActive()


def test_two_tiers_each_judged_against_its_own_storage(bed):
    """The exporter's log also holds creates of a guest on the local disk (a fast tier, 700 MB/s
    and more): a create on the throttled bed is judged against the bed's rate, not the local
    disk's. More local creates than the bed's fast ones (its teach and size ones, and the
    revert's base): a rate learned from every storage, the upper
    quartile of them all, would be the local disk's. Runs last on its bed: the local creates
    are in that exporter's log from then on."""
    only_on(bed, "throttled")
    local = testbed.create_guest(bed.conn, "local", **bed.kind.guest)  # on the local disk
    names = [f"local-{n}" for n in range(1, 9)]
    local_rates = []
    try:
        local.wait_ready(timeout=300)
        since = time.time()
        for name in names:
            testbed.create_snapshot(bed.conn, local, name)
        for name in names:
            entry = bed.judged(local, name, "create", since)
            local_rates.append(entry["qemu_written_bytes"] / entry["duration_seconds"])
            print(f"[{bed.name}] {name} on the local disk: {entry['duration_seconds']:.2f} s, "
                  f"{entry['qemu_written_bytes'] / 1e6:.0f} MB, storage {entry.get('storage')}: "
                  f"{entry['verdict']['pace_setter']}, figures {entry['verdict']['figures']}")
    finally:
        testbed.destroy_guest(bed.conn, local)
    taken = bed.snapshot("two-tiers")
    rate = taken.figures.get("reference_rate_bytes_per_second")
    print(f"[{bed.name}] two-tiers: storage {taken.entry.get('storage')}, reference rate {rate}, "
          f"the local disk's {[round(r) for r in local_rates]}")
    assert taken.verdict["pace_setter"] in ("storage-slow", "size"), taken.verdict
    assert rate is not None and 5 * rate <= min(local_rates), (rate, local_rates)
