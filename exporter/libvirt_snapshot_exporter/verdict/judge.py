"""A verdict on an operation: what set its pace, from its trace (pure: no I/O, no clock).

The model of issue 15's research brief on slow snapshots, one per kind of work (MODELS):
- written: a create with memory writes its vmstate: E = T0 + V / B_ref, V the bytes it wrote
  (written_bytes), B_ref the rate its storage sustains for such writes;
- read: a revert with memory reads a vmstate: E = T0 + V / B_ref, V the bytes QEMU read (from
  the page cache or the device), B_ref the rate of past reverts on the same storage;
- duration: a delete, or a disk-only create or revert, is qcow2 metadata work: E is the usual
  (median) duration of such operations on the same storage.
B_ref and E are learned from the operation's own storage (recorder.storage_of: the device, or
the filesystem or pool where there is none), so a fast and a slow tier on one host are each
judged against their own; the slowdown S = duration / E. A pace-setter is then named among
size (S near 1: the operation's work at its storage's usual pace), storage (the writers waiting
on I/O: slow, or contended when others wrote a large part of the device's bytes), cpu (the
writers runnable but not running: starvation), qemu-cpu (the writers running: QEMU's own work,
copying and scanning guest memory, the normal case on fast storage), cache mode (direct I/O:
every write waits for the device, and QEMU writes more than through the page cache; so also at
the usual rate), qcow2 metadata (a delete, or a create that wrote 1.5x the guest's memory or
more, with its writers on the CPU: refcount and cluster allocation work), mixed (the top two
within 1.5x), too-short (fewer samples than a share needs, and not at the usual pace) and
unknown (slower than expected with nothing standing out; with no past rate and nothing standing
out, its size). For an operation slower than usual, the shares are of the time beyond its
expected duration (_shares_of_the_excess). A failed operation is not judged
(verdict/keeper.py): its error says why.
The storage's waits are the writers' own (state D on I/O, or throttled by the dirty limits):
the device's utilisation is a figure, not a factor, since storage throttled above the device
(a block-layer throttle, QoS on a network volume) keeps requests out of the device's queue and
reads a few percent busy while the writers wait on it all the time.
Conditions that were present without setting the pace (the writer throttled by the dirty
limits, reclaim, low MemFree with MemAvailable ample) are listed apart: they change where the
writer waits, not how long the operation takes.
Calibrated on each condition induced on two slow-storage beds under a real guest (a
rate-limited FUSE device, and a block-layer throttle above a loop device):
tests/integration/test_slow_conditions.py, its recorded traces replayed by
tests/unit/test_verdict_replay.py, the figures in docs/verdict.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..model.operation import MODELS, FinishedOperation, Verdict
from ..model.trace import WRITER_ROLES, Point, Trace, counter_growth

T0_SECONDS = 0.2  # a create's fixed cost (setup, pause, qcow2 snapshot table) before its bytes
SIZE_SLOWDOWN = 1.3  # at most this much slower than expected: the size explains it
MIXED_RATIO = 1.5  # the top two causes within this ratio: mixed
MIN_SHARE = 0.2  # a cause explaining less of the time than this is no cause
MIN_SAMPLES = 5  # fewer samples within the operation: too short to judge by shares
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


WRITTEN, READ, DURATION = MODELS


def model_of(record: FinishedOperation) -> str:
    """What the operation's expected duration is modelled on (the module's docstring)."""
    if record.memory and record.operation == "create":
        return WRITTEN
    if record.memory and record.operation == "revert":
        return READ
    return DURATION


def _alike(a: FinishedOperation, b: FinishedOperation) -> bool:
    """Operations whose pace teaches the other's: the same work on the same storage (an entry
    logged before storages were told apart matches only another such)."""
    return (a.operation, a.kind, a.memory, a.storage or "") == (
        b.operation, b.kind, b.memory, b.storage or "")


def reference(records: Iterable[FinishedOperation], record: FinishedOperation) -> float | None:
    """What record's storage usually does, learned from its past successful operations of the
    same work there: bytes per second for the written and read models (the upper quartile,
    since the unstressed operations are the faster ones), seconds for the duration model (the
    median). None before there is any.
    Written: not with direct I/O (its own cause) nor `unsafe` (QEMU's flush skipped: 0.4x the
    time on the local disk, bench's comparison), nor amplified by qcow2 metadata."""
    alike = [r for r in records if r.outcome == "success" and r.duration_seconds > 0
             and _alike(r, record)]
    model = model_of(record)
    if model == DURATION:
        durations = sorted(r.duration_seconds for r in alike)
        return durations[len(durations) // 2] if durations else None
    if model == WRITTEN:
        rates = [(written_bytes(r) or 0) / r.duration_seconds for r in alike
                 if (written_bytes(r) or 0) >= RATE_MIN_BYTES
                 and not set(r.disk_cache or ()) & RATE_EXCLUDED_CACHES
                 and (write_amplification(r) or 0) < AMPLIFIED]
    else:
        rates = [read / r.duration_seconds for r in alike if r.verdict is not None
                 and (read := r.verdict.figures.get("read_bytes") or 0) >= RATE_MIN_BYTES]
    rates.sort()
    return rates[min(len(rates) - 1, int(RATE_QUANTILE * len(rates)))] if rates else None


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


def judge(trace: Trace, record: FinishedOperation, usual: float | None) -> Verdict:
    """The verdict on one operation from its trace, its log entry and what its storage usually
    does (`reference`: a rate, or for the duration model a duration)."""
    during = [p for p in trace.points if trace.start <= p.t <= trace.end and p.threads]
    samples = sum(p.n for p in during)
    figures: dict[str, float] = {"samples": samples}
    model = model_of(record)
    work = _work(trace, record, model, figures)
    figures.update(_evidence(trace, during, samples, record.duration_seconds,
                             written_bytes(record)))
    expected = slowdown = None
    if usual and (model == DURATION or work is not None):
        if model == DURATION:
            expected = usual
            figures["reference_seconds"] = usual
        else:
            expected = T0_SECONDS + work / usual
            figures["reference_rate_bytes_per_second"] = usual
        slowdown = record.duration_seconds / expected
    direct = any(c in DIRECT_IO_CACHES for c in record.disk_cache or ())
    amplification = write_amplification(record)
    if amplification is not None:
        figures["write_amplification"] = amplification
    amplified = (amplification or 0) >= AMPLIFIED
    # A delete is qcow2 metadata work (refcounts, discards); so is the excess of an internal
    # create that wrote far more than the guest's memory.
    metadata = model == DURATION or (record.kind == "internal" and amplified)
    shares = _cause_shares(figures, direct, metadata)
    if slowdown is not None and slowdown > SIZE_SLOWDOWN:
        shares = _shares_of_the_excess(shares, record.duration_seconds, expected)
    present = _present(trace, during, figures, record.duration_seconds)
    pace = _pace(samples, slowdown, shares, bytes_explain=not (direct or amplified))
    return Verdict(pace, expected, slowdown, shares, present, figures, model)


def _work(trace: Trace, record: FinishedOperation, model: str,
          figures: dict[str, float]) -> int | None:
    """The bytes the operation's model weighs (None for the duration model, or not read),
    with their figures: what QEMU wrote and how fast, or what it read and from where."""
    seconds = record.duration_seconds
    if model == WRITTEN:
        work = written_bytes(record)
        if work is not None:
            figures["written_bytes"] = work
            if seconds > 0:
                figures["write_rate_bytes_per_second"] = work / seconds
        return work
    if model == READ:
        window = [p for p in trace.points if trace.start <= p.t <= trace.end + 1.0]
        read = counter_growth(window, "qemu_read_chars")
        if read is None:
            return None
        figures["read_bytes"] = read
        device = counter_growth(window, "qemu_read_bytes")
        if device is not None:
            figures["read_from_device_bytes"] = device
        if seconds > 0:
            figures["read_rate_bytes_per_second"] = read / seconds
        return int(read)
    return None


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
        found["device_write_rate_bytes_per_second"] = (
            _delta(during, "device_write_bytes") or 0.0) / span
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
    """Each candidate cause's share of the time: CPU starvation, the writers' run delay;
    storage, their waits on I/O (contended when other writers wrote a large part of the
    device's bytes); with direct I/O those waits are the cache mode's; QEMU's own CPU work, the
    writers running (state R, less the run delay, which R also shows: a local-disk create
    83-93 % R, 12-16 % delay), which is qcow2 metadata work where the operation is metadata
    work (a 512-byte-cluster image's create 76 % R, 21 % delay)."""
    storage = figures.get("writer_device_share", 0.0) + figures.get("writer_throttled_share", 0.0)
    shares = {"cpu": figures["run_delay_share"]}
    if direct:
        shares["cache-mode"] = storage
    elif figures.get("other_writers_share", 0.0) >= CONTENDED:
        shares["storage-contended"] = storage
    else:
        shares["storage-slow"] = storage
    own = max(0.0, figures.get("writer_running_share", 0.0) - figures["run_delay_share"])
    shares["qcow2-metadata" if metadata else "qemu-cpu"] = own
    return shares


STORAGE = ("storage-slow", "storage-contended")


def _shares_of_the_excess(shares: Mapping[str, float], duration: float,
                          expected: float) -> dict[str, float]:
    """Each cause's share of the time beyond the expected duration, for an operation slower
    than usual: what made it slow. The expected duration is the operation's bytes at its
    storage's usual rate, and where the storage sets the usual pace the writers wait on it for
    about that long in every operation: its waits explain the excess only with the time beyond
    the whole expected duration. On the throttled bed a create under a real-time CPU hog took
    1.4x, its writers waiting on the throttle 64-73 % of the time (the 7 s its bytes always
    take) and runnable 62 %: the excess is the CPU's. The other causes count in full: on the
    local disk, where QEMU's own work makes the usual time, a create at 2.7x had its writers
    running 57-100 % of 7 samples and waiting for a CPU 12-14 % (the two-tier test's, and the
    usual ones' run delay was 17-21 %): subtracting the whole expected time from QEMU's work
    left nothing to explain it."""
    excess = duration - expected
    return {cause: min(1.0, max(0.0, share * duration - (expected if cause in STORAGE else 0))
                       / excess) for cause, share in shares.items()}


def _pace(samples: int, slowdown: float | None, shares: Mapping[str, float],
          bytes_explain: bool) -> str:
    """What set the pace. At about the usual pace its size did (known from its bytes and the
    rate alone, however short), unless its bytes are not its own size: direct writes (the cache
    mode: every write waits for the device, and QEMU writes more than through the page cache:
    on the bed 1.24-1.27x the bytes and 1.20-1.31x the time of the same guest's snapshot with
    cache=writeback), or amplified by qcow2 metadata."""
    usual = slowdown is not None and slowdown <= SIZE_SLOWDOWN
    if usual and bytes_explain:
        return "size"
    if samples < MIN_SAMPLES:
        return "too-short"
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
