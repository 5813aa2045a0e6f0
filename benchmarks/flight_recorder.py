#!/usr/bin/env python3
"""What the flight recorder costs: its CPU per second idle and while tracing, and a snapshot's
duration with and without it.

1. Idle: a FlightRecorder with nothing in flight, its thread's CPU time read from
   /proc/self/task/TID/schedstat over --seconds, and what note_host() (the collection loop
   handing it its host sample, once a cycle) costs the loop.
2. Tracing: the same recorder tracing a real running guest's QEMU (8 Hz, every thread), CPU
   per second and the sampling rate reached.
3. Snapshot duration: --snapshots internal creates of a guest holding random data, each taken
   while an exporter with the recorder (default) or without it (--trace.operations=0) watches,
   alternating, each snapshot deleted before the next; client wall time.

Run as root with libvirtd up:  .venv/bin/python benchmarks/flight_recorder.py [--snapshots 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import libvirt
from libvirt_snapshot_exporter.model.operation import FinishedOperation, operation_id
from libvirt_snapshot_exporter.sources.host import HostReader
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.verdict.recorder import FlightRecorder
from lse_devtools import testbed
from lse_devtools.exporter_proc import ExporterProcess


def thread_cpu_seconds(tid: int) -> float:
    """CPU time of one of this process' threads, in ns precision."""
    return int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0]) / 1e9


def measure(recorder: FlightRecorder, seconds: float) -> float:
    """CPU seconds per second of the recorder's thread over the next `seconds`."""
    before = thread_cpu_seconds(recorder.native_id)
    time.sleep(seconds)
    return (thread_cpu_seconds(recorder.native_id) - before) / seconds


def recorder_cost(conn: libvirt.virConnect, seconds: float) -> None:
    store = TraceStore("", 10, 2**26)
    recorder = FlightRecorder("/proc", str(testbed.PID_DIRECTORY), store)
    recorder.start()
    time.sleep(1.5)
    idle = measure(recorder, seconds)
    sample = HostReader("/proc").read()
    apart = FlightRecorder("/proc", str(testbed.PID_DIRECTORY), TraceStore("", 10, 2**26))
    started = time.thread_time()
    for i in range(10_000):  # one per interval: each is kept in the ring
        apart.note_host(dataclasses.replace(sample, time=sample.time + i))
    note = (time.thread_time() - started) / 10_000
    print(f"idle: the recorder's thread {idle * 1000:.3f} ms CPU per second; note_host() "
          f"{note * 1e6:.1f} us per collection cycle")
    guest = testbed.create_guest(conn, "fr-cost", memory_mib=256)
    try:
        time.sleep(2)
        start = time.time()
        recorder.begin("bench", guest.name, start, testbed.qemu_pid(guest), [str(guest.disk)])
        busy = measure(recorder, seconds)
        end = time.time()
        recorder.end("bench", FinishedOperation(guest.name, "create", "internal", True, start,
                                                end, end - start, "success", snapshot="none"))
        trace = json.loads(recorder.get(operation_id(guest.name, "none", "create", start)))
        sampled = [t for t, v in zip(trace["t"], trace["counters"]["qemu_write_bytes"],
                                     strict=True) if v is not None]
        rate = (len(sampled) - 1) / (sampled[-1] - sampled[0])
        threads = sum(col[-1] or 0 for col in trace["threads"].values())
        print(f"tracing a QEMU of {threads} threads besides its vCPUs (device "
              f"{trace['device'] or 'none'}): {busy * 1000:.2f} ms CPU per second "
              f"({busy * 100:.2f} % of a core), {rate:.1f} samples per second")
    finally:
        recorder.stop()
        testbed.destroy_guest(conn, guest)


def snapshot_durations(conn: libvirt.virConnect, snapshots: int) -> None:
    guest = testbed.create_guest(conn, "fr-snap", memory_mib=1024, fill_mib=640)
    walls: dict[str, list[float]] = {"with": [], "without": []}
    try:
        guest.wait_ready(timeout=300)
        for i in range(2 * snapshots):
            label = "with" if i % 2 == 0 else "without"
            flags = () if label == "with" else ("--trace.operations=0",)
            exporter = ExporterProcess(*flags).start()
            try:
                time.sleep(2)
                walls[label].append(testbed.create_snapshot(conn, guest, f"s{i}"))
                time.sleep(4)  # the after part is sampled too
            finally:
                exporter.stop()
            testbed.delete_all_snapshots(conn, guest)
    finally:
        testbed.destroy_guest(conn, guest)
    for label, values in walls.items():
        print(f"snapshot {label} the recorder: median {statistics.median(values):.3f} s, "
              f"mean {statistics.mean(values):.3f} s, min {min(values):.3f} s, "
              f"max {max(values):.3f} s ({', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="of each CPU measurement")
    parser.add_argument("--snapshots", type=int, default=6, help="with and without, each")
    args = parser.parse_args()
    testbed.libvirtd_up()
    conn = libvirt.open(testbed.URI)
    testbed.remove_leftovers(conn)
    recorder_cost(conn, args.seconds)
    snapshot_durations(conn, args.snapshots)


if __name__ == "__main__":
    main()
