"""A trace built by hand with slow storage's signature, and the log around it: what the
operation page's tests render and show to a headless Chromium. No libvirt, no /proc.

The operation: vm1's internal create of s1 writes 1.18 GB in 30.3 s (39 MB/s) on a device busy
96 % of the time, while this host's earlier creates ran at 120 MB/s; its main thread is
throttled by the dirty limits in 75 % of its samples and waits on the device in 20 %, and
MemFree falls to ~200 MiB while MemAvailable stays over 3 GiB. As recorded: 5 s of the
collection loop's ring before (1 Hz, memory and PSI only), 8 Hz within and 3 s after.
"""

from __future__ import annotations

import random

from libvirt_snapshot_exporter.model.operation import FinishedOperation, operation_id
from libvirt_snapshot_exporter.model.trace import Point, Trace

MIB = 2**20
GIB = 2**30
HZ = 8
START = 1796128230.772
WRITTEN = 1_180_000_000
DURATION = 30.3
USUAL_RATE = 120e6
FREE = 1300 * MIB  # before: the snapshot's page cache takes it down to ~200 MiB
AVAILABLE = 3500 * MIB  # ample all along: the page cache gives its pages back


def slow_create(domain: str = "vm1", snapshot: str = "s1") -> FinishedOperation:
    return FinishedOperation(
        domain, "create", "internal", True, START, START + DURATION, DURATION, "success",
        snapshot=snapshot, depth=2, paused_seconds=DURATION, start_source="control",
        end_source="event", uncertainty_seconds=0.005, qemu_version="7.2.0",
        disk_cache=("writeback",), qemu_written_bytes=WRITTEN,
        qemu_write_rate_bytes_per_second=int(WRITTEN / DURATION),
        host_memory_available_start_bytes=AVAILABLE, host_memory_free_min_bytes=200 * MIB)


def history() -> list[FinishedOperation]:
    """Earlier creates of 600 MB at the usual rate: what the reference rate is learned from."""
    seconds = 600e6 / USUAL_RATE
    return [FinishedOperation("vm1", "create", "internal", True, START - 3600 * k,
                              START - 3600 * k + seconds, seconds, "success", snapshot=f"old{k}",
                              qemu_written_bytes=600_000_000) for k in (3, 2, 1)]


def slow_trace(domain: str = "vm1", snapshot: str = "s1") -> Trace:
    rng = random.Random(15)
    rate = WRITTEN / DURATION
    threshold = 1200 * MIB
    points = []
    for i in range(-5, 0):  # the ring: memory and PSI memory/io, no threads nor devices
        t = START + i
        points.append(Point(t, 1, {"free": FREE, "available": AVAILABLE, "cached": 3 * GIB,
                                   "dirty": 8 * MIB, "writeback": 0},
                            {"psi_memory_some": 0.0, "psi_io_some": 2.0 + 0.01 * i}))
    written = device = 0.0
    psi_io = psi_cpu = 2.0
    for i in range(int((DURATION + 3) * HZ)):
        t = START + i / HZ
        within = t <= START + DURATION
        step = rate / HZ * rng.uniform(0.8, 1.2)
        written += step if within else 0.0
        device += step
        psi_io += rng.uniform(0.85, 0.95) / HZ
        psi_cpu += rng.uniform(0.0, 0.04) / HZ
        dirty = min(threshold * rng.uniform(0.97, 1.0), 8 * MIB + written * 2)
        if not within:  # drained
            dirty = max(8 * MIB, threshold * (1 - (t - START - DURATION) / 3))
        draw = rng.random()
        state = ("main:D:balance_dirty_pages" if draw < 0.75 else
                 "main:D:rq_qos_wait" if draw < 0.95 else "main:R:") if within \
            else "main:S:do_sys_poll"
        points.append(Point(
            t, 1,
            {"free": int(FREE - written * rng.uniform(0.99, 1.0)),
             "available": int(AVAILABLE - written / 8), "cached": int(3 * GIB + written), "dirty": int(dirty),
             "writeback": int(rng.uniform(60, 140) * MIB), "dirty_threshold": threshold,
             "dirty_background_threshold": threshold // 2},
            {"qemu_write_bytes": written, "device_write_bytes": device,
             "device_busy_ms": 960.0 * i / HZ, "psi_io_some": psi_io, "psi_memory_some": 0.01,
             "psi_cpu_some": psi_cpu, "run_delay_main_ns": 2e6 * i},
            {state: 1, "worker:S:futex_wait_queue": 1}))
    return Trace(operation_id(domain, snapshot, "create", START), domain, snapshot, "create",
                 START, START + DURATION, 1 / HZ, "vda", tuple(points))
