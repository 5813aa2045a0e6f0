"""The flight recorder: samples what sets an operation's pace, on a thread of its own.

While any operation is in flight, and for POST_SECONDS after it, it samples every
ACTIVE_INTERVAL: host memory, dirty thresholds, reclaim counters and PSI (sources/host.py's
HostReader, the collection loop's too), the block device under the domain's images (psutil's
/proc/diskstats), and the domain's QEMU: its bytes written (psutil) and the state, wait channel
and run delay of each of its writer threads (/proc/PID/task/TID/{stat,wchan,schedstat};
sources/qemu_process.py). Between operations it reads nothing: the collection loop hands it
the host sample it takes anyway (note_host(), every cycle, at least each poll-interval), kept
in a ring from which a new operation's trace takes the PRE_SECONDS before its start (an
operation is recognised tens of milliseconds after it began: the ring covers that). Those
samples lack only the device counters.
Finished traces go to the TraceStore (the exporter's) and to on_trace (the collection loop
judges them; bench, which keeps no store, judges and draws them). The collection loop only
calls begin(), end() and retain(), which read nothing but the images' device numbers:
sampling never holds it up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..model.operation import FinishedOperation
from ..model.samples import HostSample
from ..model.trace import GAUGES, PSI, Point, Trace, TraceBuilder
from ..sources.host import HostReader
from ..sources.qemu_process import QemuThreads
from ..store.trace_store import TraceStore

log = logging.getLogger(__name__)

ACTIVE_INTERVAL = 0.125  # s: 8 Hz while an operation is in flight, comfortably over 5 Hz
PRE_SECONDS = 5.0  # of the ring put before an operation's start
POST_SECONDS = 3.0  # sampled after its end
RING_SECONDS = PRE_SECONDS + 5.0  # a little more: an operation may be recognised late
MAX_POINTS = 1200


def host_point(sample: HostSample, device: str) -> Point:
    """A host sample as a trace point: memory gauges, reclaim and PSI counters, and the
    counters of the device under the domain's images (if the sample read the disks)."""
    gauges = {key: sample.memory[key] for key in GAUGES if key in sample.memory}
    counters: dict[str, float] = dict(sample.reclaim)
    counters.update({PSI + key: seconds for key, seconds in sample.pressure.items()})
    disk = sample.disks.get(device)
    if disk is not None:
        counters.update({
            "device_read_bytes": disk.read_bytes, "device_write_bytes": disk.write_bytes,
            "device_reads": disk.read_count, "device_writes": disk.write_count,
            "device_busy_ms": disk.busy_time, "device_write_ms": disk.write_time,
        })
    return Point(sample.time, 1, gauges, counters)


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


def mount_point(path: str) -> str:
    """The mount point of the filesystem holding path ('' when path does not exist)."""
    if not os.path.exists(path):
        return ""
    current = os.path.realpath(path)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def storage_of(sources: Iterable[str], sysfs: str = "/sys") -> tuple[str, str]:
    """(device, storage) of a domain's disks: the block device whose counters the trace
    reads, and what the verdict learns a rate for: that device, else the filesystem's mount
    point (NFS, FUSE), else for a network disk (no path: 'pool/image') its protocol's pool."""
    sources = list(sources)
    for source in sources:
        if source.startswith("/") and (device := block_device(source, sysfs)):
            return device, device
    for source in sources:
        if source.startswith("/") and (mount := mount_point(source)):
            return "", mount
    network = next((s for s in sources if s and not s.startswith("/")), "")
    return "", f"network:{network.split('/', 1)[0]}" if network else ""


@dataclass
class _Recording:
    key: str
    domain: str
    start: float
    device: str
    storage: str
    builder: TraceBuilder
    qemu: QemuThreads
    record: FinishedOperation | None = None  # once the operation ended


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
        self.procfs, self.pid_directory = procfs, pid_directory
        self.host = HostReader(procfs)
        self._ring: deque[HostSample] = deque()
        self._recordings: dict[str, _Recording] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flight-recorder", daemon=True)
        self.failing = False  # its last tick raised
        self.tick_seconds = 0.0  # its last tick's duration

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Keep the traces of operations that ended (without the rest of their after part)."""
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=2.0)
        with self._lock:
            recordings = list(self._recordings.values())
            self._recordings.clear()
        for rec in recordings:
            rec.qemu.close()
            if rec.record is not None:
                self._finish(rec)

    @property
    def native_id(self) -> int | None:
        """The sampler thread's id in /proc/self/task: what its CPU cost is read from."""
        return self._thread.native_id

    def begin(self, key: str, domain: str, start: float, pid: int | None,
              disks: Iterable[str]) -> None:
        """An operation was recognised: its trace starts with the ring's samples from
        PRE_SECONDS before its start. Called by the collection loop: reads nothing but the
        disks' device numbers (disks: their sources, a path or a network disk's name)."""
        device, storage = storage_of(disks)
        rec = _Recording(key, domain, start, device, storage, TraceBuilder(self.max_points),
                         QemuThreads(self.procfs, self.pid_directory, domain, pid))
        with self._lock:
            if key in self._recordings:
                return
            for reading in self._ring:
                if reading.time >= start - PRE_SECONDS:
                    rec.builder.add(host_point(reading, device))
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
                    not self._ring or sample.time - self._ring[-1].time >= ACTIVE_INTERVAL):
                self._remember(sample)

    def _remember(self, sample: HostSample) -> None:
        self._ring.append(sample)
        while self._ring[0].time < sample.time - RING_SECONDS:
            self._ring.popleft()

    def retain(self, in_flight: Iterable[str]) -> None:
        """Drop the recordings of operations that left the tracker without ending (none
        should): a recording is never sampled for ever."""
        keep = set(in_flight)
        with self._lock:
            for key in [k for k, r in self._recordings.items()
                        if r.record is None and k not in keep]:
                self._recordings.pop(key).qemu.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._tick()
                if self.failing:
                    log.info("flight recorder works again")
                self.failing = False
            except Exception as exc:  # noqa: BLE001 - a bad /proc read must not end the thread
                if not self.failing:
                    log.error("flight recorder failed: %s: %s (logged once until it recovers)",
                              type(exc).__name__, exc)
                self.failing = True
            self.tick_seconds = time.monotonic() - started
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
        reading = self.host.read(traced=True)
        with self._lock:
            self._remember(reading)
            recordings = list(self._recordings.values())
        for rec in recordings:
            counters, threads = rec.qemu.read()
            base = host_point(reading, rec.device)
            point = Point(base.t, 1, base.gauges, {**base.counters, **counters}, threads)
            with self._lock:
                rec.builder.add(point)
            if rec.record is not None and reading.time >= rec.record.end + POST_SECONDS:
                with self._lock:
                    self._recordings.pop(rec.key, None)
                rec.qemu.close()
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
            device=rec.device, points=points, storage=rec.storage,
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
