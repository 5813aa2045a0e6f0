#!/usr/bin/env python3
"""What each condition that can make a snapshot slow does to a real internal snapshot, on the
slow-storage bed (lse_devtools.slow_storage) and under the exporter as it is.

For each condition of ../shared/slow-snapshots.md ("What each condition did"): baseline, a
smaller guest, a competing writer, a real-time CPU hog on QEMU's CPU, tight dirty limits, a
memory hog and cache=none, it takes --runs internal snapshots of a filled TCG guest whose disk
lives on the bed, samples the host and QEMU's threads at --hz itself (the exporter's own flight
recorder is not this), and prints one row per snapshot: the client's duration and the
exporter's, the exporter's verdict (what set the pace, and the conditions present; its log
holds this run's snapshots alone, the first teaching it the bed's rate), the bytes QEMU and
the device wrote, the Dirty peak, PSI io/memory/cpu over the
snapshot, the QEMU main thread's run delay, and the share of samples in which a QEMU thread
sat in balance_dirty_pages, in reclaim, or waiting on the device (and the main thread was
runnable), with the commonest wait channel.

Host-wide settings (dirty limits, CPU affinity, a real-time loop, a memory hog) are changed
and restored: run it alone, as root with libvirtd up:
    flock /tmp/lse-heavy.lock .venv/bin/python benchmarks/slow_conditions.py [--runs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import libvirt
from lse_devtools import stressors, testbed
from lse_devtools.driving import operations
from lse_devtools.exporter_proc import ExporterProcess
from lse_devtools.slow_storage import SlowStorage, diskstats, slow_guest, slow_storage

MiB = 1 << 20
THROTTLE = ("balance_dirty_pages",)
RECLAIM = ("shrink_", "try_to_free_pages", "__alloc_pages_slowpath", "throttle_direct_reclaim",
           "__perform_reclaim", "mem_cgroup_handle_over_high")
DEVICE = ("folio_wait", "io_schedule", "blk_mq_get_tag", "file_write_and_wait_range", "jbd2_",
          "rq_qos_wait", "__iomap_dio_rw", "bit_wait_io", "submit_bio_wait", "blkdev_issue_flush",
          "do_get_write_access", "wait_transaction_locked", "wait_on_page")


def psi_totals() -> dict[str, int]:
    """Microseconds of stall so far: io some/full, memory some/full, cpu some."""
    totals = {}
    for resource in ("io", "memory", "cpu"):
        for line in Path(f"/proc/pressure/{resource}").read_text().splitlines():
            kind, *fields = line.split()
            totals[f"{resource}_{kind}"] = int(fields[-1].split("=")[1])
    return totals


def meminfo(*keys: str) -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, value = line.split(":")
        if name in keys:
            found[name] = int(value.split()[0]) * 1024
    return found


def run_delay_ns(pid: int, tid: int) -> int:
    """Time the thread spent runnable but not running (schedstat's second field)."""
    return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise KeyError("write_bytes")


def classify(wchan: str) -> str | None:
    if wchan.startswith(THROTTLE):
        return "throttled"
    if wchan.startswith(RECLAIM):
        return "reclaim"
    if wchan.startswith(DEVICE):
        return "device"
    return None


@dataclass
class Samples:
    """What the sampler saw over one snapshot."""

    count: int = 0
    dirty_peak: int = 0
    shares: Counter = field(default_factory=Counter)  # samples with a thread in each class
    main_runnable: int = 0
    wchans: Counter = field(default_factory=Counter)  # wait channels of threads in state D


class Sampler:
    """Samples /proc at hz in a thread while the block runs: meminfo, and every QEMU thread's
    state and wait channel."""

    def __init__(self, pid: int, hz: float) -> None:
        self.pid, self.period = pid, 1.0 / hz
        self.result = Samples()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        r = self.result
        r.dirty_peak = max(r.dirty_peak, meminfo("Dirty")["Dirty"])
        seen = set()
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{self.pid}/task/{tid}/stat").read_text()
                state = stat[stat.rindex(")") + 2]
                wchan = Path(f"/proc/{self.pid}/task/{tid}/wchan").read_text()
                if int(tid) == self.pid and state == "R":
                    r.main_runnable += 1
                kind = classify(wchan)
                if kind:
                    seen.add(kind)
                if state == "D":
                    r.wchans[wchan] += 1
        r.shares.update(seen)
        r.count += 1

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                self._sample()
            next_at += self.period
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Row:
    condition: str
    wall: float
    exporter: float | None
    verdict: str  # the exporter's: pace-setter (+ conditions present)
    qemu_written: int
    device_written: int
    device_busy: float  # share of the time the device had requests in flight
    device_writes: int
    samples: Samples
    psi: dict[str, float]
    main_delay: float
    all_delay: float
    delete: float


def settle(timeout: float = 60.0) -> None:
    """Wait for the last run's dirty data to drain, so each snapshot starts alike."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mem = meminfo("Dirty", "Writeback")
        if mem["Dirty"] + mem["Writeback"] < 16 * MiB:
            return
        time.sleep(0.5)


def measure(conn: libvirt.virConnect, exporter: ExporterProcess, storage: SlowStorage,
            guest: testbed.Guest, condition: str, run: int, hz: float) -> Row:
    """One internal snapshot of guest, measured, then deleted."""
    snapshot = f"{re.sub('[^A-Za-z0-9]+', '-', condition)}-{run}"  # libvirt refuses a '/'
    pid = testbed.qemu_pid(guest)
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    delays0 = {t: run_delay_ns(pid, t) for t in tids}
    psi0, disk0, wb0 = psi_totals(), diskstats(storage.device), write_bytes(pid)
    since = time.time()
    with Sampler(pid, hz) as sampler:
        wall = testbed.create_snapshot(conn, guest, snapshot)
    psi1, disk1, wb1 = psi_totals(), diskstats(storage.device), write_bytes(pid)
    delays1 = {t: run_delay_ns(pid, t) for t in os.listdir(f"/proc/{pid}/task")}
    ops = exporter.wait_for(  # judged once its trace is complete, 3 s after its end
        lambda: [o for o in operations(exporter, guest.name, since)
                 if o["snapshot"] == snapshot and o["verdict"]],
        30, f"the exporter's verdict on {snapshot}")
    dom = conn.lookupByName(guest.name)
    start = time.monotonic()
    dom.snapshotLookupByName(snapshot).delete()
    delete = time.monotonic() - start
    psi = {k: (psi1[k] - psi0[k]) / 1e6 / wall for k in psi0}
    return Row(condition, wall, ops[-1]["duration_seconds"], _verdict(ops[-1]["verdict"]),
               wb1 - wb0,
               (disk1["sectors_written"] - disk0["sectors_written"]) * 512,
               (disk1["io_ticks_ms"] - disk0["io_ticks_ms"]) / 1000 / wall,
               disk1["writes"] - disk0["writes"], sampler.result, psi,
               (delays1.get(str(pid), 0) - delays0[pid]) / 1e9,
               sum(delays1[str(t)] - d for t, d in delays0.items() if str(t) in delays1) / 1e9,
               delete)


def _verdict(verdict: dict) -> str:
    return " + ".join([verdict["pace_setter"], *verdict["present"]])


def qemu_cpu_hog(guest: testbed.Guest) -> contextlib.AbstractContextManager:
    return stressors.rt_cpu_hog(testbed.qemu_pid(guest))


def conditions(storage: SlowStorage) -> list[tuple[str, dict, Callable[[testbed.Guest],
                                                                      contextlib.AbstractContextManager]]]:
    """(name, guest, stressor) in an order that boots each kind of guest once."""
    big = {"memory_mib": 1024, "fill_mib": 512}
    return [
        ("baseline", big, lambda g: contextlib.nullcontext()),
        ("dirty-64M/16M", big, lambda g: stressors.dirty_limits(64 * MiB, 16 * MiB)),
        ("memory-hog-3G", big, lambda g: stressors.memory_hog(3 << 30)),
        ("competing-writer", big, lambda g: stressors.competing_writer(storage.directory, 256)),
        ("rt-cpu-hog", big, qemu_cpu_hog),
        ("smaller-guest", {"memory_mib": 1024, "fill_mib": 256}, lambda g: contextlib.nullcontext()),
        ("cache=none", {**big, "disk_cache": "none"}, lambda g: contextlib.nullcontext()),
    ]


def percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def print_table(rows: list[Row]) -> None:
    head = ("condition", "wall s", "exporter s", "verdict", "QEMU MB", "device MB", "device busy",
            "request KiB", "Dirty peak MB",
            "PSI io some/full", "PSI mem some", "PSI cpu some", "main run delay s (all)",
            "throttled", "reclaim", "device wait", "main R", "top D wchan", "delete s")
    lines = [head]
    for r in rows:
        s = r.samples
        n = max(1, s.count)
        top = s.wchans.most_common(1)[0][0] if s.wchans else "-"
        lines.append((
            r.condition, f"{r.wall:.1f}", "-" if r.exporter is None else f"{r.exporter:.2f}",
            r.verdict,
            f"{r.qemu_written / 1e6:,.0f}", f"{r.device_written / 1e6:,.0f}",
            percent(r.device_busy), f"{r.device_written / 1024 / max(1, r.device_writes):.0f}",
            f"{s.dirty_peak / 1e6:,.0f}",
            f"{percent(r.psi['io_some'])}/{percent(r.psi['io_full'])}",
            percent(r.psi["memory_some"]), percent(r.psi["cpu_some"]),
            f"{r.main_delay:.1f} ({r.all_delay:.1f})",
            percent(s.shares["throttled"] / n), percent(s.shares["reclaim"] / n),
            percent(s.shares["device"] / n), percent(s.main_runnable / n), top,
            f"{r.delete:.2f}"))
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "---|" * len(head))
    for line in lines[1:]:
        print("| " + " | ".join(line) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="snapshots per condition")
    parser.add_argument("--rate", type=float, default=40e6, help="device bytes per second")
    parser.add_argument("--hz", type=float, default=10.0, help="samples per second")
    parser.add_argument("--only", nargs="*", help="conditions to run (default: all)")
    args = parser.parse_args()
    testbed.libvirtd_up()
    conn = libvirt.open(testbed.URI)
    testbed.remove_leftovers(conn)
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    rows: list[Row] = []
    exporter = ExporterProcess().start()
    try:
        with slow_storage(size_mib=1536, rate=args.rate) as storage:
            print(f"bed: {storage.device} at {storage.rate / 1e6:.0f} MB/s, {storage.directory}",
                  flush=True)
            todo = [c for c in conditions(storage) if not args.only or c[0] in args.only]
            for _, group in groupby(todo, key=lambda c: repr(c[1])):
                group = list(group)
                with slow_guest(conn, storage, "slowbench", **group[0][1]) as guest:
                    for name, _, stressor in group:
                        for run in range(1, args.runs + 1):
                            settle()
                            with stressor(guest):
                                time.sleep(2)  # the stressor at work before the snapshot
                                row = measure(conn, exporter, storage, guest, name, run, args.hz)
                            rows.append(row)
                            print(f"{name} run {run}: {row.wall:.1f} s, {row.verdict}", flush=True)
    finally:
        exporter.stop()
        print(f"the exporter's log and traces: {exporter.state_dir}")
        print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")
        print_table(rows)  # what was measured, also when a condition failed
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
