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
16 samples (2 s) each with the default 1,200. A sample taken less than MIN_STEP_SECONDS after
the point before it (the sampler woken early by an operation's start) merges into that point,
so a second of trace holds at most 16 points however the sampler is woken.

A trace read back (a file anyone with the state directory may have written) is checked
against these bounds by from_json, so what is drawn and judged from it costs a bounded amount
of work: at most MAX_POINTS + 1 points (none when the exporter stopped before the first),
strictly increasing in time and at most MAX_POINTS_PER_SECOND in any second, within the hour
around the operation, every figure a finite number of sane magnitude, thread keys of the
form role:state:wchan.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .operation import ID, MAX_MAGNITUDE, MAX_TIMESTAMP, OPERATIONS, number

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

MAX_POINTS = 1200  # TraceBuilder's bound (the recorder's); a partly filled last point beside
MIN_STEP_SECONDS = 1 / 16  # closer samples merge (TraceBuilder.add)
# Bounds on a trace read back: a second holds at most 16 points as written (and 8 to 10 in
# every trace recorded on the test beds), the figures the recorder samples (7 gauges, some 24
# counters, 4 to 18 thread keys seen), the hour around its operation.
MAX_POINTS_PER_SECOND = 20
MAX_COUNTERS = 64
MAX_THREAD_KEYS = 64
TIME_MARGIN_SECONDS = 3600.0
MAX_INTERVAL_SECONDS = 60.0
COUNTER_NAME = re.compile(r"[a-z0-9_]{1,64}")
# role:state:wchan (thread_key): a known role, the one-letter state of /proc/PID/stat, a
# kernel symbol or nothing
THREAD_KEY = re.compile(r"(main|worker|migration|iothread|vcpu|other):[A-Za-z]:[A-Za-z0-9_.$]{0,128}")
NOT_IN_WCHAN = re.compile(r"[^A-Za-z0-9_.$]")


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
    """The key a thread's sample is counted under; a running thread has no wait channel. What
    THREAD_KEY does not allow (a kernel's odd symbol) becomes '_', so the trace reads back."""
    wchan = "" if state == "R" or wchan == "0" else NOT_IN_WCHAN.sub("_", wchan[:128])
    return f"{role}:{state}:{wchan}"


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
    return Point(max(a.t, b.t), a.n + b.n, gauges, {**a.counters, **b.counters}, threads)


class TraceBuilder:
    """Collects an operation's points, downsampling as it goes (bounded whatever the length)."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        if max_points < 2:
            raise ValueError("max_points must be at least 2")
        self.max_points = max_points
        self.stride = 1
        self._points: list[Point] = []
        self._pending: Point | None = None

    def add(self, point: Point) -> None:
        if self._pending is None and self._points \
                and point.t - self._points[-1].t < MIN_STEP_SECONDS:
            # too close to the point before to stand apart, or before it (the clock stepped
            # back): merged into it, so times only increase. The 1 Hz ring's last sample, a
            # moment before the first one an operation's start woke (which reads QEMU's
            # threads), is replaced instead: merged, it would count in the threads' shares as a
            # sample in no state.
            before = self._points[-1]
            replaced = before.n == 1 and not before.threads and point.threads
            self._points[-1] = (Point(max(before.t, point.t), 1, point.gauges, point.counters,
                                      point.threads) if replaced else merge(before, point))
            return
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


def from_json(data: Any, trace_id: str | None = None) -> Trace:
    """The inverse of Trace.to_json; ValueError, saying what is wrong, for anything that is
    not a trace of this version within the module's bounds (a file on disk is not trusted),
    or not the trace of `trace_id` when given (the name it was found under)."""
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
    _check_header(text, numbers, trace_id)
    _check_times(times, counts, numbers["start"], numbers["end"])
    _check_columns(kinds, len(times))
    points = tuple(
        Point(times[i], counts[i],
              *({name: col[i] for name, col in kinds[kind].items() if col[i] is not None}
                for kind in ("gauges", "counters", "threads")))
        for i in range(len(times))
    )
    return Trace(points=points, **text, **numbers)


def _check_header(text: dict[str, Any], numbers: dict[str, Any], trace_id: str | None) -> None:
    if not all(isinstance(v, str) for v in text.values()):
        raise ValueError("a text field is not a string")
    if not ID.fullmatch(text["id"]) or trace_id is not None and text["id"] != trace_id:
        raise ValueError(f"id {text['id'][:20]!r} is not {trace_id or 'an operation id'}")
    if text["operation"] not in OPERATIONS:
        raise ValueError(f"operation {text['operation'][:20]!r} is not an operation")
    start, end, interval = numbers["start"], numbers["end"], numbers["interval_seconds"]
    if not all(number(v) and 0 <= v <= MAX_TIMESTAMP for v in (start, end)) or end < start:
        raise ValueError("start and end are not times of an operation")
    if not number(interval) or not 0 < interval <= MAX_INTERVAL_SECONDS:
        raise ValueError("interval_seconds out of range")


def _check_times(times: Any, counts: Any, start: float, end: float) -> None:
    """Points bounded in number and density, in time order around the operation: what keeps
    the work of drawing and judging them bounded (a window of a second holds a few points)."""
    if not isinstance(times, list) or not isinstance(counts, list) or len(counts) != len(times):
        raise ValueError("t and n are not lists of one length")
    if len(times) > MAX_POINTS + 1:  # none: an operation ended as the exporter stopped
        raise ValueError(f"{len(times)} points, over {MAX_POINTS + 1}")
    low, high = start - TIME_MARGIN_SECONDS, end + TIME_MARGIN_SECONDS
    if not all(number(t) and low <= t <= high for t in times):
        raise ValueError("a time is not a number within the hour around the operation")
    if not all(a < b for a, b in zip(times, times[1:], strict=False)):
        raise ValueError("times do not strictly increase")
    step = MAX_POINTS_PER_SECOND
    if not all(b - a >= 1.0 for a, b in zip(times, times[step:], strict=False)):
        raise ValueError(f"more than {step} points in a second")
    if not all(isinstance(c, int) and not isinstance(c, bool) and 0 < c < 2**31 for c in counts):
        raise ValueError("bad sample counts")


def _check_columns(kinds: dict[str, Any], length: int) -> None:
    """Known gauges, counters and thread keys in bounded number, each a list as long as t of
    finite numbers (thread samples: counts) or nulls."""
    names = {"gauges": GAUGES, "counters": COUNTER_NAME, "threads": THREAD_KEY}
    most = {"gauges": len(GAUGES), "counters": MAX_COUNTERS, "threads": MAX_THREAD_KEYS}
    for kind, columns in kinds.items():
        if not isinstance(columns, dict) or len(columns) > most[kind]:
            raise ValueError(f"{kind}: not an object of at most {most[kind]} columns")
        known = names[kind]
        for name, column in columns.items():
            if not (name in known if isinstance(known, tuple) else known.fullmatch(name)):
                raise ValueError(f"{kind}: unknown name {name[:40]!r}")
            value_ok = _count if kind == "threads" else number
            if not isinstance(column, list) or len(column) != length \
                    or not all(v is None or value_ok(v) for v in column):
                raise ValueError(f"{kind}: {name} is not a list of numbers as long as t")


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_MAGNITUDE


def counter_growth(points: Sequence[Point], key: str) -> float | None:
    """A counter's growth over the points, summed step by step: a revert may start a new QEMU,
    whose counters start again (None with fewer than two points holding it)."""
    values = [p.counters[key] for p in points if key in p.counters]
    if len(values) < 2:
        return None
    return sum(max(0.0, b - a) for a, b in zip(values, values[1:], strict=False))


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
