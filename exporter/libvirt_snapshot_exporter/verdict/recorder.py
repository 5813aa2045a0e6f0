"""The flight recorder: samples what sets an operation's pace, on a thread of its own.

While any operation is in flight, and for POST_SECONDS after it, it samples every
ACTIVE_INTERVAL: host memory, dirty thresholds, reclaim counters and PSI (host.py's parsers),
the block device under the domain's images (psutil's /proc/diskstats), and the domain's QEMU:
its bytes written (psutil) and the state, wait channel and run delay of each of its threads
(/proc/PID/task/TID/{stat,wchan,schedstat}). Between operations it reads nothing: the
collection loop hands it the host sample it takes anyway (note_host(), every cycle, at least
each poll-interval), kept in a ring from which a new operation's trace takes the PRE_SECONDS
before its start (an operation is recognised tens of milliseconds after it began: the ring
covers that). Those samples carry memory and PSI memory/io only.
Finished traces go to the TraceStore (the exporter's) and to on_trace (the collection loop
judges them; bench, which keeps no store, judges and draws them). The collection loop only
calls begin(), end() and retain(), which read nothing but the images' device numbers:
sampling never holds it up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from ..model.operation import FinishedOperation
from ..model.samples import HostSample
from ..model.trace import (
    ROLE_VCPU,
    Point,
    RunDelays,
    Trace,
    TraceBuilder,
    thread_key,
    thread_role,
)
from ..sources.host import PAGE_SIZE, parse_meminfo, parse_pressure, vmstat_fields
from ..sources.qemu_process import parse_schedstat, parse_task_stat, read_qemu_pid
from ..store.trace_store import TraceStore

log = logging.getLogger(__name__)

ACTIVE_INTERVAL = 0.125  # s: 8 Hz while an operation is in flight, comfortably over 5 Hz
PRE_SECONDS = 5.0  # of the ring put before an operation's start
POST_SECONDS = 3.0  # sampled after its end
RING_SECONDS = PRE_SECONDS + 5.0  # a little more: an operation may be recognised late
MAX_POINTS = 1200

MEMINFO = {"free": "MemFree", "available": "MemAvailable", "cached": "Cached",
           "dirty": "Dirty", "writeback": "Writeback"}
VMSTAT_GAUGES = {"dirty_threshold": "nr_dirty_threshold",
                 "dirty_background_threshold": "nr_dirty_background_threshold"}  # pages
VMSTAT_COUNTERS = ("pgscan_kswapd", "pgscan_direct", "pgsteal_kswapd", "pgsteal_direct")
PRESSURE = ("memory", "io", "cpu")


@dataclass(frozen=True)
class HostReading:
    """One host-wide sample: what the ring keeps."""

    t: float
    gauges: dict[str, int]
    counters: dict[str, float]
    disks: dict[str, Any]  # device name -> psutil's sdiskio

    def point(self, device: str) -> Point:
        counters = dict(self.counters)
        disk = self.disks.get(device)
        if disk is not None:
            counters.update({
                "device_read_bytes": disk.read_bytes, "device_write_bytes": disk.write_bytes,
                "device_reads": disk.read_count, "device_writes": disk.write_count,
                "device_busy_ms": disk.busy_time, "device_write_ms": disk.write_time,
            })
        return Point(self.t, 1, self.gauges, counters)


def from_host_sample(sample: HostSample) -> HostReading:
    """The collection loop's host sample as a ring entry: what it has of the same figures."""
    gauges = {key: sample.memory[key] for key in MEMINFO if key in sample.memory}
    counters = {f"psi_{key}": seconds for key, seconds in sample.pressure.items()}
    return HostReading(sample.time, gauges, counters, {})


class HostSampler:
    """Reads the host-wide figures from a procfs."""

    def __init__(self, procfs: str) -> None:
        self.procfs = Path(procfs)
        psutil.PROCFS_PATH = procfs  # its diskstats, as host.HostReader's

    def read(self) -> HostReading:
        now = time.time()
        meminfo = parse_meminfo((self.procfs / "meminfo").read_text())
        vmstat = vmstat_fields((self.procfs / "vmstat").read_text())
        gauges = {key: meminfo[name] for key, name in MEMINFO.items() if name in meminfo}
        gauges.update({key: vmstat[name] * PAGE_SIZE for key, name in VMSTAT_GAUGES.items()
                       if name in vmstat})
        counters: dict[str, float] = {k: vmstat[k] for k in VMSTAT_COUNTERS if k in vmstat}
        counters["allocstall"] = sum(v for k, v in vmstat.items() if k.startswith("allocstall"))
        for resource in PRESSURE:
            with contextlib.suppress(OSError):  # a kernel without PSI
                text = (self.procfs / "pressure" / resource).read_text()
                for kind, seconds in parse_pressure(text).items():
                    counters[f"psi_{resource}_{kind}"] = seconds
        disks = psutil.disk_io_counters(perdisk=True, nowrap=False) or {}
        return HostReading(now, gauges, counters, disks)


def block_device(path: str, sysfs: str = "/sys") -> str:
    """The whole disk under a file (sda for a file on sda1, loop0 for one on an ext4 on
    loop0), or '' for a file on no block device (tmpfs, NFS, overlay)."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return ""
    node = Path(sysfs) / "dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
    try:
        real = node.resolve(strict=True)
    except OSError:
        return ""
    return real.parent.name if (real / "partition").exists() else real.name


@dataclass
class _Recording:
    key: str
    domain: str
    start: float
    pid: int | None
    device: str
    builder: TraceBuilder
    delays: RunDelays = field(default_factory=RunDelays)
    roles: dict[str, str] = field(default_factory=dict)  # tid -> role, from its first name
    process: psutil.Process | None = None
    record: FinishedOperation | None = None  # once the operation ended


class QemuSampler:
    """Reads one QEMU process: bytes written and its threads' states."""

    def __init__(self, procfs: str, pid_directory: str) -> None:
        self.procfs = Path(procfs)
        self.pid_directory = Path(pid_directory)

    def read(self, rec: _Recording) -> tuple[dict[str, float], dict[str, int]]:
        """(counters, thread states) of the recording's QEMU; empty when it is gone (a revert
        starts a new QEMU: its pid file then names it)."""
        if rec.process is None or not rec.process.is_running():
            if rec.process is not None or rec.pid is None:
                rec.pid = read_qemu_pid(self.pid_directory, rec.domain)
            rec.process = None
            if rec.pid is None:
                return {}, {}
            try:
                rec.process = psutil.Process(rec.pid)
            except psutil.Error:
                rec.pid = None  # the pid file names the next one
                return {}, {}
        counters: dict[str, float] = {}
        with contextlib.suppress(psutil.Error, AttributeError):
            io = rec.process.io_counters()
            counters = {"qemu_write_bytes": io.write_bytes, "qemu_write_chars": io.write_chars}
        states: dict[str, int] = {}
        delays = []
        for tid, role, state, wchan, delay in self._threads(rec):
            key = thread_key(role, state, wchan)
            states[key] = states.get(key, 0) + 1
            delays.append((tid, role, delay))
        for role, total in rec.delays.update(delays).items():
            counters[f"run_delay_{role}_ns"] = total
        return counters, states

    def _threads(self, rec: _Recording) -> Iterable[tuple[int, str, str, str, int]]:
        """(tid, role, state, wchan, run delay) of each thread but the vCPUs, which write
        nothing of a snapshot (paused during an internal one): with many vCPUs most of the
        threads, skipped once their name is known."""
        task = f"{self.procfs}/{rec.pid}/task"
        try:
            tids = os.listdir(task)
        except OSError:
            return
        for tid in tids:
            if rec.roles.get(tid) == ROLE_VCPU:
                continue
            base = f"{task}/{tid}"
            try:
                name, state = parse_task_stat(_read(f"{base}/stat"))
                role = rec.roles.setdefault(tid, thread_role(rec.pid, int(tid), name))
                if role == ROLE_VCPU:
                    continue
                wchan = "" if state == "R" else _read(f"{base}/wchan").strip()
                delay = parse_schedstat(_read(f"{base}/schedstat"))
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
            yield int(tid), role, state, wchan, delay


def _read(path: str) -> str:
    """A small /proc file, without pathlib's cost (this runs 8 times a second per thread)."""
    with open(path) as handle:
        return handle.read()


class FlightRecorder:
    """Starts a trace at begin(), finishes it POST_SECONDS after end(), keeps it in the store
    (if any) and hands it to on_trace."""

    def __init__(self, procfs: str, pid_directory: str, store: TraceStore | None,
                 max_points: int = MAX_POINTS) -> None:
        self.store = store
        # Told of each finished trace with its operation's record, from the recorder's thread
        # (or from stop()): the collection loop (or bench) judges it.
        self.on_trace: Callable[[Trace, FinishedOperation], None] = lambda _t, _r: None
        self.max_points = max_points
        self.host = HostSampler(procfs)
        self.qemu = QemuSampler(procfs, pid_directory)
        self._ring: deque[HostReading] = deque()
        self._recordings: dict[str, _Recording] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-recorder", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Keep the traces of operations that ended (without the rest of their after part)."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2.0)
        with self._lock:
            done = [r for r in self._recordings.values() if r.record is not None]
            self._recordings.clear()
        for rec in done:
            self._finish(rec)

    @property
    def native_id(self) -> int | None:
        """The sampler thread's id in /proc/self/task: what its CPU cost is read from."""
        return self._thread.native_id

    def begin(self, key: str, domain: str, start: float, pid: int | None,
              images: Iterable[str]) -> None:
        """An operation was recognised: its trace starts with the ring's samples from
        PRE_SECONDS before its start. Called by the collection loop: reads nothing but the
        images' device numbers."""
        device = next((d for d in map(block_device, images) if d), "")
        rec = _Recording(key, domain, start, pid, device, TraceBuilder(self.max_points))
        with self._lock:
            if key in self._recordings:
                return
            for reading in self._ring:
                if reading.t >= start - PRE_SECONDS:
                    rec.builder.add(reading.point(device))
            self._recordings[key] = rec
        self._wake.set()  # the first sample of it now, not at the next idle tick

    def end(self, key: str, record: FinishedOperation) -> None:
        """The operation ended (record is its log entry): sampled POST_SECONDS more."""
        with self._lock:
            rec = self._recordings.get(key)
            if rec is not None:
                rec.record = record

    def recent(self, key: str, count: int) -> tuple[Point, ...]:
        """The last `count` points of a recording not yet finished (bench's progress line);
        empty for any other key."""
        with self._lock:
            rec = self._recordings.get(key)
            return rec.builder.points()[-count:] if rec is not None else ()

    def note_host(self, sample: HostSample) -> None:
        """The collection loop's host sample, for the ring between operations (while one is
        traced the recorder's own samples fill it); at most one per ACTIVE_INTERVAL, however
        often events make the loop cycle."""
        with self._lock:
            if not self._recordings and (
                    not self._ring or sample.time - self._ring[-1].t >= ACTIVE_INTERVAL):
                self._remember(from_host_sample(sample))

    def _remember(self, reading: HostReading) -> None:
        self._ring.append(reading)
        while self._ring[0].t < reading.t - RING_SECONDS:
            self._ring.popleft()

    def retain(self, in_flight: Iterable[str]) -> None:
        """Drop the recordings of operations that left the tracker without ending (none
        should): a recording is never sampled for ever."""
        keep = set(in_flight)
        with self._lock:
            for key in [k for k, r in self._recordings.items()
                        if r.record is None and k not in keep]:
                del self._recordings[key]

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._tick()
                if self._failing:
                    log.info("flight recorder works again")
                self._failing = False
            except Exception as exc:  # noqa: BLE001 - a bad /proc read must not end the thread
                if not self._failing:
                    log.error("flight recorder failed: %s: %s (logged once until it recovers)",
                              type(exc).__name__, exc)
                self._failing = True
            with self._lock:
                active = bool(self._recordings)
            # Idle: asleep until begin() or stop() wakes it.
            self._wake.wait(max(0.0, ACTIVE_INTERVAL - (time.monotonic() - started))
                            if active else None)
            self._wake.clear()

    def _tick(self) -> None:
        with self._lock:
            if not self._recordings:
                return
        reading = self.host.read()
        with self._lock:
            self._remember(reading)
            recordings = list(self._recordings.values())
        for rec in recordings:
            counters, threads = self.qemu.read(rec)
            base = reading.point(rec.device)
            point = Point(base.t, 1, base.gauges, {**base.counters, **counters}, threads)
            with self._lock:
                rec.builder.add(point)
            if rec.record is not None and reading.t >= rec.record.end + POST_SECONDS:
                with self._lock:
                    self._recordings.pop(rec.key, None)
                self._finish(rec)

    def _finish(self, rec: _Recording) -> None:
        trace = self._trace(rec)
        if self.store is not None:
            self.store.add(trace)
        self.on_trace(trace, rec.record)

    def _trace(self, rec: _Recording) -> Trace:
        record = rec.record
        snapshot = record.snapshot or ""
        with self._lock:
            points = rec.builder.points()
        return Trace(
            id=record.id,
            domain=record.domain, snapshot=snapshot, operation=record.operation,
            start=record.start, end=record.end, interval_seconds=ACTIVE_INTERVAL,
            device=rec.device, points=points,
        )

    def get(self, trace_id: str) -> bytes | None:
        """A finished trace's JSON; while its after part is still sampled, what it has so far."""
        with self._lock:
            ended = [r for r in self._recordings.values() if r.record is not None]
        for rec in ended:
            trace = self._trace(rec)
            if trace.id == trace_id:
                return json.dumps(trace.to_json(), separators=(",", ":")).encode()
        return self.store.get(trace_id) if self.store is not None else None
