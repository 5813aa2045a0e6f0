"""An operation's trace: what the flight recorder sampled around it (pure: no I/O, no clock).

A point is one sample, or several merged when a long trace is downsampled. Each carries three
kinds of figures, and each kind merges its own way so that a merged point says what its raw
samples said:
- gauges (bytes at the sampling moment): the extreme over the merged interval, the one that
  matters for "why slow": the lowest MemFree and MemAvailable, the highest Cached, Dirty and
  Writeback, the last dirty thresholds;
- counters (cumulative: reclaim, PSI, device, QEMU bytes, run delay): the value at the end of
  the interval, so the rate over any interval between two points stays exact;
- thread states ("role:state:wchan" -> samples in that state): summed, so a share of time is
  a count over the points' `n`.

Downsampling rule: a trace keeps at most `max_points` points. When it would exceed them,
adjacent pairs merge and later samples are merged `stride` at a time (the stride doubles
each time), so a trace of any length keeps between max_points / 2 and max_points points,
evenly spaced in samples; a 30-minute operation at 8 Hz (14,400 samples) keeps 900 points of
16 samples (2 s) each with the default 1,200.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

GAUGES_MIN = ("free", "available")
GAUGES_MAX = ("cached", "dirty", "writeback")
GAUGES_LAST = ("dirty_threshold", "dirty_background_threshold")
GAUGES = GAUGES_MIN + GAUGES_MAX + GAUGES_LAST

# Thread roles: which QEMU threads write an operation's data (the doc's "writer threads").
ROLE_MAIN, ROLE_WORKER, ROLE_MIGRATION, ROLE_IOTHREAD = "main", "worker", "migration", "iothread"
ROLE_VCPU, ROLE_OTHER = "vcpu", "other"
WRITER_ROLES = (ROLE_MAIN, ROLE_WORKER, ROLE_MIGRATION, ROLE_IOTHREAD)

TRACE_VERSION = 1
PSI = "psi_"  # a trace's PSI counters: HostSample.pressure's keys with this prefix


def thread_role(pid: int, tid: int, name: str) -> str:
    """What a QEMU thread does, from its name (comm): internal snapshots are written by the
    main loop and its worker threads, external memory snapshots by the migration thread."""
    if tid == pid:
        return ROLE_MAIN
    if name.startswith("CPU ") or name.endswith(("/KVM", "/TCG")):
        return ROLE_VCPU
    if name.startswith(("worker", "iou-wrk")):
        return ROLE_WORKER
    if name.startswith(("live_migration", "mig/")):
        return ROLE_MIGRATION
    if name.startswith("IO ") and name != "IO mon_iothread":  # the monitor's writes nothing
        return ROLE_IOTHREAD
    return ROLE_OTHER


def thread_key(role: str, state: str, wchan: str) -> str:
    """The key a thread's sample is counted under; a running thread has no wait channel."""
    return f"{role}:{state}:{'' if state == 'R' or wchan == '0' else wchan}"


@dataclass(frozen=True)
class Point:
    t: float  # wall-clock time of the last raw sample merged into it
    n: int  # raw samples it stands for
    gauges: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, float] = field(default_factory=dict)
    threads: Mapping[str, int] = field(default_factory=dict)


def merge(a: Point, b: Point) -> Point:
    """b follows a: one point standing for both (the rules in the module's docstring)."""
    gauges = {**a.gauges, **b.gauges}
    for key in GAUGES_MIN + GAUGES_MAX:
        if key in a.gauges and key in b.gauges:
            pick = min if key in GAUGES_MIN else max
            gauges[key] = pick(a.gauges[key], b.gauges[key])
    threads = dict(a.threads)
    for key, count in b.threads.items():
        threads[key] = threads.get(key, 0) + count
    return Point(b.t, a.n + b.n, gauges, {**a.counters, **b.counters}, threads)


class TraceBuilder:
    """Collects an operation's points, downsampling as it goes (bounded whatever the length)."""

    def __init__(self, max_points: int = 1200) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2")
        self.max_points = max_points
        self.stride = 1
        self._points: list[Point] = []
        self._pending: Point | None = None

    def add(self, point: Point) -> None:
        self._pending = point if self._pending is None else merge(self._pending, point)
        if self._pending.n < self.stride:
            return
        self._points.append(self._pending)
        self._pending = None
        if len(self._points) > self.max_points:
            if len(self._points) % 2:  # the odd one out fills up at the new stride
                self._pending = self._points.pop()
            self._points = [merge(self._points[i], self._points[i + 1])
                            for i in range(0, len(self._points), 2)]
            self.stride *= 2

    def points(self) -> tuple[Point, ...]:
        """All points so far, a partly filled last one included."""
        tail = (self._pending,) if self._pending is not None else ()
        return (*self._points, *tail)


@dataclass(frozen=True)
class Trace:
    id: str
    domain: str
    snapshot: str
    operation: str
    start: float
    end: float
    interval_seconds: float  # the sampler's period while the operation ran
    device: str  # the block device under the domain's images ('' when none was found)
    points: tuple[Point, ...]
    # what the domain's images live on: the device, else the filesystem's mount point
    # (recorder.storage_of); '' in traces written before storages were told apart
    storage: str = ""

    def to_json(self) -> dict[str, Any]:
        """Columnar: one list per figure, aligned with `t` (null where a point lacks it), which
        is compact and what a chart takes."""
        points = self.points
        columns: dict[str, Any] = {"t": [round(p.t, 3) for p in points], "n": [p.n for p in points]}
        for kind in ("gauges", "counters", "threads"):
            names = sorted({k for p in points for k in getattr(p, kind)})
            columns[kind] = {name: [_number(getattr(p, kind).get(name)) for p in points]
                             for name in names}
        return {
            "version": TRACE_VERSION, "id": self.id, "domain": self.domain,
            "snapshot": self.snapshot, "operation": self.operation, "start": round(self.start, 3),
            "end": round(self.end, 3), "interval_seconds": self.interval_seconds,
            "device": self.device, "storage": self.storage, **columns,
        }


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    return value if isinstance(value, int) else round(value, 6)


def from_json(data: Any) -> Trace:
    """The inverse of Trace.to_json; ValueError for anything that is not a trace of this
    version (a file on disk is not trusted)."""
    if not isinstance(data, dict) or data.get("version") != TRACE_VERSION:
        raise ValueError(f"not a trace of version {TRACE_VERSION}")
    try:
        times, counts = data["t"], data["n"]
        text = {k: data[k] for k in ("id", "domain", "snapshot", "operation", "device")}
        numbers = {k: data[k] for k in ("start", "end", "interval_seconds")}
        kinds = {k: data[k] for k in ("gauges", "counters", "threads")}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"missing field {exc}") from None
    text["storage"] = data.get("storage", "")
    if not all(isinstance(v, str) for v in text.values()):
        raise ValueError("a text field is not a string")
    if not all(_finite(v) for v in [*numbers.values(), *times]):
        raise ValueError("a time is not a finite number")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts) \
            or len(counts) != len(times):
        raise ValueError("bad sample counts")
    for columns in kinds.values():
        if not isinstance(columns, dict) or not all(
                isinstance(col, list) and len(col) == len(times)
                and all(v is None or _finite(v) for v in col) for col in columns.values()):
            raise ValueError("a column is not a list of numbers as long as t")
    points = tuple(
        Point(times[i], counts[i],
              *({name: col[i] for name, col in kinds[kind].items() if col[i] is not None}
                for kind in ("gauges", "counters", "threads")))
        for i in range(len(times))
    )
    return Trace(points=points, **text, **numbers)


def counter_growth(points: Sequence[Point], key: str) -> float | None:
    """A counter's growth over the points, summed step by step: a revert may start a new QEMU,
    whose counters start again (None with fewer than two points holding it)."""
    values = [p.counters[key] for p in points if key in p.counters]
    if len(values) < 2:
        return None
    return sum(max(0.0, b - a) for a, b in zip(values, values[1:], strict=False))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RunDelays:
    """Run delay (time runnable but not running) summed per thread role over the operation.
    Threads come and go (QEMU's worker pool), so each thread's growth is added as seen rather
    than summing the threads alive at one moment."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self.totals: dict[str, int] = {}

    def update(self, threads: Iterable[tuple[int, str, int]]) -> dict[str, int]:
        """threads: (tid, role, run_delay_ns); returns the totals by role, in ns."""
        seen = {}
        for tid, role, delay in threads:
            previous = self._last.get(tid)
            grown = delay - previous if previous is not None and delay >= previous else 0
            self.totals[role] = self.totals.get(role, 0) + grown
            seen[tid] = delay
        self._last = seen
        return dict(self.totals)
