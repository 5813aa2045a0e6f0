"""A verdict on an operation: what set its pace, from its trace (pure: no I/O, no clock).

The model of issue 15's research brief on slow snapshots: the expected duration is
E = T0 + V / B_ref, V the operation's bytes (written_bytes), B_ref the rate the host sustains
for such writes, learned from its own past operations; the slowdown S = duration / E. A pace-setter is
then named among size (S near 1: the bytes at the usual rate), storage (the writers waiting on
a device that is busy most of the time: slow, or contended when others wrote a large part of
its bytes), CPU (the writers runnable but not running), cache mode (direct I/O: every write
waits for the device, and QEMU writes more than through the page cache; so also at the usual
rate), qcow2 metadata (an internal delete, or a create that wrote 1.5x the guest's memory or more,
with its writers on the CPU: refcount and cluster allocation work), mixed (the top two within
1.5x) and unknown (too few samples, or slower than expected
with nothing standing out; with no past rate and nothing standing out, its size). Conditions
that were present without setting the pace (the writer throttled by the dirty limits,
reclaim, low MemFree with MemAvailable ample) are listed apart: they change where the writer
waits, not how long the operation takes.
Calibrated on each condition induced on the slow-storage bed (40 MB/s) under a real guest:
tests/integration/test_slow_conditions.py, its recorded traces replayed by
tests/unit/test_verdict_replay.py, the figures in the README ("The verdict").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..model.operation import FinishedOperation, Verdict
from ..model.trace import WRITER_ROLES, Point, Trace

T0_SECONDS = 0.2  # a create's fixed cost (setup, pause, qcow2 snapshot table) before its bytes
SIZE_SLOWDOWN = 1.3  # at most this much slower than expected: the size explains it
MIXED_RATIO = 1.5  # the top two causes within this ratio: mixed
MIN_SHARE = 0.2  # a cause explaining less of the time than this is no cause
MIN_SAMPLES = 5  # fewer samples within the operation: unknown
CONTENDED = 0.3  # other writers' share of the device's bytes above which it is contention
THROTTLED = 0.1  # share of time in balance_dirty_pages that is worth saying
LOW_FREE = 256 * 2**20
AMPLE_AVAILABLE = 2**30
PSI_MEMORY = 0.1  # PSI memory some over the duration that is memory pressure
RATE_MIN_BYTES = 64 * 2**20  # operations that wrote less teach nothing about the rate
RATE_QUANTILE = 0.75  # the unstressed operations are the faster ones

WAIT_THROTTLED = ("balance_dirty_pages",)
WAIT_RECLAIM = ("shrink_", "try_to_free", "__alloc_pages_slowpath", "reclaim", "compact")
DIRECT_IO_CACHES = ("none", "directsync")
RATE_EXCLUDED_CACHES = {*DIRECT_IO_CACHES, "unsafe"}
# QEMU wrote more than this times the guest's whole memory, which a vmstate cannot exceed: each
# of its writes also allocated qcow2 clusters (an image of 512-byte clusters: 4.4x, 1.19 GB for
# a 256 MiB guest; 64 KiB clusters 0.37-0.66x, cache=none 0.83x; the traces measured here)
AMPLIFIED = 1.5


def reference_rate(records: Iterable[FinishedOperation]) -> float | None:
    """Bytes per second this host's storage sustains for a snapshot's writes, learned from its
    past successful internal creates with memory through the page cache: the upper quartile of
    their rates, since the unstressed ones are the faster ones. None before there is any.
    Not with direct I/O (its own cause) nor `unsafe` (QEMU's flush skipped: 0.4x the time on
    the local disk, bench's comparison)."""
    rates = sorted(
        r.qemu_written_bytes / r.duration_seconds for r in records
        if r.operation == "create" and r.kind == "internal" and r.memory
        and r.outcome == "success" and (r.qemu_written_bytes or 0) >= RATE_MIN_BYTES
        and r.duration_seconds > 0 and not set(r.disk_cache or ()) & RATE_EXCLUDED_CACHES
        and (write_amplification(r) or 0) < AMPLIFIED)
    if not rates:
        return None
    return rates[min(len(rates) - 1, int(RATE_QUANTILE * len(rates)))]


def wait_class(key: str) -> str:
    """running | throttled | reclaim | device | idle, from a 'role:state:wchan' key."""
    _role, state, wchan = key.split(":", 2)
    if state == "R":
        return "running"
    if wchan.startswith(WAIT_THROTTLED):
        return "throttled"
    if any(w in wchan for w in WAIT_RECLAIM):
        return "reclaim"
    if state == "D":
        return "device"
    return "idle"


def writer_waits(point: Point) -> dict[str, int]:
    """Samples of the point in which a writer thread was in each wait class (a sample with two
    writers in the same class counts once, so a share never exceeds the point's samples)."""
    counted: dict[str, int] = {}
    for key, count in point.threads.items():
        if key.split(":", 1)[0] in WRITER_ROLES:
            cls = wait_class(key)
            counted[cls] = counted.get(cls, 0) + count
    return {cls: min(count, point.n) for cls, count in counted.items()}


def _delta(points: Sequence[Point], key: str) -> float | None:
    values = [p.counters[key] for p in points if key in p.counters]
    return values[-1] - values[0] if len(values) >= 2 else None


def _span(points: Sequence[Point], key: str) -> float | None:
    values = [p.t for p in points if key in p.counters]
    return values[-1] - values[0] if len(values) >= 2 else None


def judge(trace: Trace, record: FinishedOperation, rate: float | None) -> Verdict:
    """The verdict on one operation from its trace, its log entry and the learned rate."""
    during = [p for p in trace.points if trace.start <= p.t <= trace.end and p.threads]
    samples = sum(p.n for p in during)
    figures: dict[str, float] = {"samples": samples}
    written = written_bytes(record)
    figures.update(_evidence(trace, during, samples, record.duration_seconds, written))
    expected = slowdown = None
    if written is not None and rate:
        expected = T0_SECONDS + written / rate
        slowdown = record.duration_seconds / expected
        figures.update(written_bytes=written, reference_rate_bytes_per_second=rate)
    direct = any(c in DIRECT_IO_CACHES for c in record.disk_cache or ())
    amplification = write_amplification(record)
    if amplification is not None:
        figures["write_amplification"] = amplification
    amplified = (amplification or 0) >= AMPLIFIED
    # An internal delete is qcow2 metadata work (refcounts, discards); so is the excess of an
    # internal create that wrote far more than the guest's memory.
    metadata = record.kind == "internal" and (record.operation == "delete" or amplified)
    shares = _cause_shares(figures, direct, metadata)
    present = _present(trace, during, figures, record.duration_seconds)
    pace = _pace(samples, slowdown, shares, bytes_explain=not (direct or amplified))
    return Verdict(pace, expected, slowdown, shares, present, figures)


def write_amplification(record: FinishedOperation) -> float | None:
    """An internal create's bytes over the guest's memory, the most its vmstate can be (the
    memory in use is no bound: the guest's page cache is not "used", yet it is written)."""
    if (record.operation != "create" or record.kind != "internal" or not record.memory
            or not record.qemu_written_bytes or not record.guest_memory_total_bytes):
        return None
    return record.qemu_written_bytes / record.guest_memory_total_bytes


def written_bytes(record: FinishedOperation) -> int | None:
    """The operation's bytes: QEMU's, or the memory its job processed where more. libvirt
    hands an external snapshot's memory stream to its iohelper, which writes the file: QEMU's
    write counter showed 0 bytes for those (libvirt 9.0)."""
    known = [b for b in (record.qemu_written_bytes, record.job_memory_processed_bytes)
             if b is not None]
    return max(known) if known else None


def _evidence(trace: Trace, during: Sequence[Point], samples: int, duration: float,
              written: int | None) -> dict[str, float]:
    """The figures the causes are weighed by: the share of the writers' samples in each wait
    class (a sample counts for a class when any writer thread is in it, so the main thread
    idling in poll while a worker writes does not hide the worker's wait), the device's
    utilisation over the operation, the other writers' share of its bytes, and the writers'
    run delay over the duration."""
    found: dict[str, float] = {}
    for p in during:
        for cls, count in writer_waits(p).items():
            found[f"writer_{cls}_share"] = found.get(f"writer_{cls}_share", 0.0) + count / samples
    delay = sum(v for k, v in _deltas(during, "run_delay_").items()
                if k.removeprefix("run_delay_").removesuffix("_ns") in WRITER_ROLES)
    found["run_delay_share"] = min(1.0, delay / 1e9 / duration) if duration > 0 else 0.0
    busy, span = _delta(during, "device_busy_ms"), _span(during, "device_busy_ms")
    if busy is not None and span:
        found["device_utilisation"] = min(1.0, busy / 1000 / span)
    others = _other_writers_share(trace, written)
    if others is not None:
        found["other_writers_share"] = others
    return found


def _other_writers_share(trace: Trace, written: int | None) -> float | None:
    """The share of the device's bytes that others wrote, from the first QEMU sample to the
    end of the trace (the device may still write the operation's pages after it ends). An
    operation is recognised a moment after it starts, under load seconds after, and by then
    QEMU may have put most of a vmstate in the page cache: bytes the device writes in the
    window but QEMU's counter does not show. The operation's are therefore the larger of the
    log's (written_bytes) and QEMU's in the trace plus the dirty data that grew between the
    start and that sample."""
    sampled = [p for p in trace.points if p.t >= trace.start
               and "qemu_write_bytes" in p.counters and "device_write_bytes" in p.counters]
    if len(sampled) < 2:
        return None
    first, last = sampled[0].counters, sampled[-1].counters
    device = last["device_write_bytes"] - first["device_write_bytes"]
    if device <= 0:
        return None
    before = [p for p in trace.points if p.t <= trace.start and "dirty" in p.gauges]
    grown = _unwritten(sampled[0]) - (_unwritten(before[-1]) if before else 0)
    qemu = last["qemu_write_bytes"] - first["qemu_write_bytes"] + max(0, grown)
    return max(0.0, (device - max(qemu, written or 0)) / device)


def _unwritten(point: Point) -> int:
    return point.gauges.get("dirty", 0) + point.gauges.get("writeback", 0)


def _cause_shares(figures: Mapping[str, float], direct: bool,
                  metadata: bool) -> dict[str, float]:
    """Each candidate cause's share of the time: CPU, the writers' run delay; storage, their
    waits on the device weighted by how busy it was (contended when other writers wrote a
    large part of its bytes); with direct I/O those waits are the cache mode's; qcow2
    metadata, where the operation is metadata work, the writers on the CPU (state R, less
    the run delay, which R also shows: a 512-byte-cluster image's create 76 % R, 21 % delay)."""
    device_wait = figures.get("writer_device_share", 0.0) + figures.get(
        "writer_throttled_share", 0.0)
    shares = {"cpu": figures["run_delay_share"]}
    if direct:
        shares["cache-mode"] = device_wait
    elif figures.get("other_writers_share", 0.0) >= CONTENDED:
        shares["storage-contended"] = device_wait * figures.get("device_utilisation", 0.0)
    else:
        shares["storage-slow"] = device_wait * figures.get("device_utilisation", 0.0)
    if metadata:
        shares["qcow2-metadata"] = max(
            0.0, figures.get("writer_running_share", 0.0) - figures["run_delay_share"])
    return shares


def _pace(samples: int, slowdown: float | None, shares: Mapping[str, float],
          bytes_explain: bool) -> str:
    """What set the pace. At about the usual rate its size did, unless its bytes are not its
    own size: direct writes (the cache mode: every write waits for the device, and QEMU writes
    more than through the page cache: on the bed 1.24-1.27x the bytes and 1.20-1.31x the time
    of the same guest's snapshot with cache=writeback), or amplified by qcow2 metadata."""
    if samples < MIN_SAMPLES:
        return "unknown"
    usual = slowdown is not None and slowdown <= SIZE_SLOWDOWN
    if usual and bytes_explain:
        return "size"
    (top, best), *rest = sorted(shares.items(), key=lambda kv: kv[1], reverse=True)
    if best < MIN_SHARE:
        # Nothing held the writers back: with no past rate to compare with, or at about the
        # usual rate, its own bytes set the pace; slower than that with no cause seen, it is
        # not known why.
        return "size" if slowdown is None or usual else "unknown"
    if rest and rest[0][1] * MIXED_RATIO >= best:
        return "mixed"
    return top


def _deltas(points: Sequence[Point], prefix: str) -> dict[str, float]:
    keys = {k for p in points for k in p.counters if k.startswith(prefix)}
    return {k: d for k in keys if (d := _delta(points, k)) is not None}


def _present(trace: Trace, during: Sequence[Point], figures: Mapping[str, float],
             duration: float) -> tuple[str, ...]:
    """Conditions seen during the operation, said whether or not they set its pace: from the
    last point before it began to its end, not the ring's earlier seconds (the previous
    operation's tail) nor the writeback after it."""
    found = []
    began = max((p.t for p in trace.points if p.t <= trace.start), default=trace.start)
    window = [p for p in trace.points if began <= p.t <= trace.end]
    if figures.get("writer_throttled_share", 0.0) >= THROTTLED:
        found.append("dirty-throttling")
    reclaim = sum(_delta(window, k) or 0 for k in ("pgscan_direct", "allocstall"))
    if reclaim > 0 or figures.get("writer_reclaim_share", 0.0) > 0:
        found.append("direct-reclaim")
    elif (_delta(window, "pgscan_kswapd") or 0) > 0:
        found.append("kswapd-reclaim")
    psi = _delta(during, "psi_memory_some")
    if psi is not None and duration > 0 and psi / duration >= PSI_MEMORY:
        found.append("memory-pressure")
    free = [p.gauges["free"] for p in window if "free" in p.gauges]
    available = [p.gauges["available"] for p in window if "available" in p.gauges]
    if free and available and min(free) < LOW_FREE and min(available) >= AMPLE_AVAILABLE:
        found.append("low-memfree-ample-memavailable")
    return tuple(found)
