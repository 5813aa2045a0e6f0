"""An operation's verdict explained for a person: the figures charted from its trace (rates
from the cumulative counters, shares of time from the thread samples) and the verdict in
words, with the figures it rests on. Pure; the operation page (web/) and bench's plots show
the same charts and sentences.

One unit family in the charts and the words alike, decimal as the device's and QEMU's byte
counters and a storage's rated speed are: MB, GB and MB/s, so a rate in a sentence can be
read off its chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..model.operation import MODELS, FinishedOperation, Verdict
from ..model.trace import WRITER_ROLES, Point, Trace
from .judge import (
    AMPLIFIED,
    MIN_SAMPLES,
    MIN_SHARE,
    MIXED_RATIO,
    RATE_MIN_BYTES,
    SIZE_SLOWDOWN,
    write_amplification,
    writer_waits,
    written_bytes,
)

MB = 10**6
WRITTEN, READ, DURATION = MODELS

CAUSES = {
    "size": "size", "storage-slow": "slow storage", "storage-contended": "contended storage",
    "cpu": "CPU starvation", "qemu-cpu": "QEMU's own CPU work",
    "cache-mode": "the disk cache mode", "qcow2-metadata": "qcow2 metadata", "mixed": "mixed",
    "too-short": "too short to judge", "unknown": "unknown",
}
SHARE_WINDOW = 1.0  # seconds of thread samples each point of the thread chart sums
WAIT_SERIES = (("running", "running"), ("device", "waiting on the device"),
               ("throttled", "throttled by dirty limits"), ("reclaim", "reclaiming memory"))
RUN_DELAY_TITLE = "QEMU's writers waiting for a CPU (run delay)"
# The device busy at least this much while the writers waited on I/O: it was the bottleneck
BUSY_DEVICE = 0.8


# --- figures --------------------------------------------------------------------------------


def _per_second(points: Sequence[Point], values: Sequence[float | None],
                scale: float) -> list[float | None]:
    """Per second between each point and the one before it (None where either lacks the
    value, or it went back: a revert's new QEMU)."""
    rates: list[float | None] = [None]
    for i in range(1, len(points)):
        a, b, dt = values[i - 1], values[i], points[i].t - points[i - 1].t
        if a is not None and b is not None and dt > 0 and b >= a:
            rates.append(round((b - a) / dt * scale, 3))
        else:
            rates.append(None)
    return rates


def _rate(points: Sequence[Point], key: str, scale: float) -> list[float | None]:
    """A counter's rate (`_per_second`)."""
    return _per_second(points, [p.counters.get(key) for p in points], scale)


def _run_delay(points: Sequence[Point]) -> list[float | None]:
    """The writers' run delay in % of the time, their roles' counters summed at each point
    (100 % = one thread runnable and not running all the time): the `cpu` verdict's
    evidence."""
    keys = [f"run_delay_{role}_ns" for role in WRITER_ROLES]
    sums: list[float | None] = []
    for p in points:
        found = [p.counters[k] for k in keys if k in p.counters]
        sums.append(sum(found) if found else None)
    return _per_second(points, sums, 100 / 1e9)


def _io(trace: Trace) -> tuple[str, list[tuple[str, list[float | None]]]]:
    """The writes chart; for a revert, which reads its vmstate, QEMU's reads beside them:
    then it is the I/O chart (every trace has the read counters, near zero for the rest)."""
    points = trace.points
    writes = [("device (" + (trace.device or "?") + ")",
               _rate(points, "device_write_bytes", 1 / MB)),
              ("QEMU", _rate(points, "qemu_write_bytes", 1 / MB))]
    reads = [("QEMU reads", _rate(points, "qemu_read_chars", 1 / MB)),
             ("QEMU reads from the device", _rate(points, "qemu_read_bytes", 1 / MB))]
    if trace.operation != "revert" or not any(v is not None for _, vs in reads for v in vs):
        return "writes", writes
    return "I/O", [(f"{label} writes", values) for label, values in writes] + reads


def _writer_shares(points: Sequence[Point]) -> list[dict[str, float] | None]:
    """At each point, the share (%) of the samples of the second up to it in which a writer
    thread was in each wait class, counted as the verdict counts them (a sample at a time
    would be 0 or 100 %); None before the threads are sampled."""
    shares: list[dict[str, float] | None] = []
    for i, point in enumerate(points):
        if not point.threads:
            shares.append(None)
            continue
        counted: dict[str, int] = {}
        samples = 0
        for p in (points[j] for j in range(i, -1, -1)):
            if not p.threads or (samples and p.t <= point.t - SHARE_WINDOW):
                break
            samples += p.n
            for cls, count in writer_waits(p).items():
                counted[cls] = counted.get(cls, 0) + count
        shares.append({cls: round(100 * count / samples, 1) for cls, count in counted.items()})
    return shares


def charts(trace: Trace) -> dict[str, Any]:
    """The charts' data: x in seconds from the start, the operation from 0 to `end`, and per
    chart its series (all-empty series and charts left out, and named in `missing`)."""
    points = trace.points
    def mb(gauges: Sequence[tuple[str, str]]) -> list[tuple[str, list[float | None]]]:
        return [(label, [round(p.gauges[k] / MB, 1) if k in p.gauges else None
                         for p in points]) for k, label in gauges]

    shares = _writer_shares(points)
    io_title, io = _io(trace)
    specs = [
        ("host memory", "MB", mb((("free", "MemFree"), ("available", "MemAvailable"),
                                  ("cached", "Cached")))),
        # apart: a few hundred MB beside tens of GB would be a flat line
        ("dirty data", "MB", mb((("dirty", "Dirty"), ("writeback", "Writeback"),
                                 ("dirty_threshold", "dirty threshold")))),
        (io_title, "MB/s", io),
        ("pressure (PSI some)", "% of time",
         [(resource, _rate(points, f"psi_{resource}_some", 100))
          for resource in ("io", "memory", "cpu")]),
        ("QEMU's writer threads (over the last second)", "% of samples",
         [(label, [None if s is None else s.get(cls, 0.0) for s in shares])
          for cls, label in WAIT_SERIES]),
        (RUN_DELAY_TITLE, "% of time", [("run delay", _run_delay(points))]),
    ]
    drawn, missing = [], []
    for title, unit, series in specs:
        kept = [{"label": label, "values": values} for label, values in series
                if any(v is not None for v in values)]
        if kept:
            drawn.append({"title": title, "unit": unit, "series": kept})
        else:
            missing.append(title)
    return {"x": [round(p.t - trace.start, 3) for p in points],
            "end": round(trace.end - trace.start, 3), "charts": drawn, "missing": missing}


# --- words ------------------------------------------------------------------------------------


def size_text(value: float) -> str:
    """Bytes as the page says them, decimal like the rates: '1.18 GB', '352 MB', '0.4 MB'."""
    if value >= 1e9:
        return f"{value / 1e9:.2f} GB"
    return f"{value / MB:,.0f} MB" if value >= 10 * MB else f"{value / MB:.1f} MB"


def _mbs(value: float) -> str:
    return f"{value / MB:,.0f} MB/s" if value >= 10 * MB else f"{value / MB:.1f} MB/s"


def _secs(value: float) -> str:
    """'12.3 s', '0.8 s', '0.05 s': short durations keep two significant digits."""
    return f"{value:,.1f} s" if value >= 1 else f"{value:.2g} s"


def percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def failure_sentence(record: FinishedOperation) -> str:
    """What a failed operation shows where a verdict would be: it gets none (its error, not a
    pace, says why it ended)."""
    return f"Failed: {record.error}" if record.error else "Failed"


def _such(record: FinishedOperation) -> str:
    """The operations a reference is learned from (judge._alike: the same operation, kind and
    memory), in words: 'internal create with memory', 'internal delete of a disk-only
    snapshot'."""
    what = f"{record.kind} {record.operation}"
    if record.operation == "delete":
        return what + (" of a snapshot with memory" if record.memory
                       else " of a disk-only snapshot")
    return what + (" with memory" if record.memory else " without memory")


def _slower(verdict: Verdict, expected: bool) -> str:
    """'3.0x slower than expected (10.0 s)'; within SIZE_SLOWDOWN, '1.1x the expected
    duration', the usual pace (expected: whether to say the expected duration)."""
    assert verdict.slowdown is not None
    said = f" ({_secs(verdict.expected_seconds)})" if expected and verdict.expected_seconds \
        else ""
    if verdict.slowdown > SIZE_SLOWDOWN:
        return f"{verdict.slowdown:.1f}x slower than expected{said}"
    return f"{verdict.slowdown:.1f}x the expected duration{said}"


def _pace_against_usual(verdict: Verdict, record: FinishedOperation) -> str:
    """The operation's work against what its storage usually does, by the verdict's model:
    '1.18 GB written at 39 MB/s against 120 MB/s usual on vda, 3.0x slower than expected
    (10.0 s)'; '… read (0.8 GB from the device) at …'; '0.8 s against 0.1 s usual for such
    operations on vda, 8.0x slower than expected'; with no reference yet, what is missing
    (a logged verdict with an expected duration but not its reference, null in the log, is
    said without the reference). A verdict logged before models existed was a written one."""
    f = {k: v for k, v in verdict.figures.items() if v is not None}
    model = verdict.model or WRITTEN
    on = f" on {record.storage}" if record.storage else ""

    def missing(such: str, learned: str) -> str:
        return (f"no expected duration yet: no successful {such} is logged on "
                f"{record.storage or 'the same storage'} to learn its usual {learned} from")

    seconds = record.duration_seconds
    if model == DURATION:
        usual = f.get("reference_seconds")
        if verdict.slowdown is None:
            return missing(_such(record), "duration")
        if not usual:
            return f"{_secs(seconds)}, {_slower(verdict, expected=True)}"
        return (f"{_secs(seconds)} against {_secs(usual)} usual for such operations{on}, "
                f"{_slower(verdict, expected=False)}")
    rate = f.get("reference_rate_bytes_per_second")
    if model == READ:
        work = f.get("read_bytes")
        if work is None:
            return "no expected duration: its trace does not show what QEMU read"
        device = f.get("read_from_device_bytes")
        done = f"{size_text(work)} read" + (
            f" ({size_text(device)} from the device)" if device is not None else "")
        verb = "read"
    else:
        work = f["written_bytes"] if "written_bytes" in f else written_bytes(record)
        if work is None:
            return "no expected duration: the bytes it wrote are not known"
        done, verb = f"{size_text(work)} written", "wrote"
    if verdict.slowdown is None:
        return missing(f"{_such(record)} that {verb} {size_text(RATE_MIN_BYTES)} or more",
                       "rate")
    observed = f" at {_mbs(work / seconds)}" if seconds > 0 else ""
    against = f" against {_mbs(rate)} usual{on}" if rate else ""
    return f"{done}{observed}{against}, {_slower(verdict, expected=True)}"


def _io_waits(f: dict[str, float]) -> tuple[float, str]:
    """The writers' share of samples waiting on I/O (the storage share: on the device, or
    throttled by the dirty limits), and that said: 'QEMU's writers waited on I/O in 95 % of
    their samples (on the device 20 %, throttled by the dirty limits 75 %)'."""
    device, throttled = f.get("writer_device_share", 0.0), f.get("writer_throttled_share", 0.0)
    waited = min(1.0, device + throttled)
    said = f"QEMU's writers waited on I/O in {percent(waited)} of their samples"
    if device and throttled:
        said += f" (on the device {percent(device)}, throttled by the dirty limits " \
                f"{percent(throttled)})"
    elif throttled:
        said += " (throttled by the dirty limits)"
    return waited, said


def _device_busy(f: dict[str, float], waited: float) -> str:
    """The device's utilisation, said where it adds: busy most of the time, the device was
    the bottleneck; idle much of the time the writers waited, their requests waited above
    it (a block-layer throttle, QoS on a network volume), which no faster disk would cure."""
    busy = f.get("device_utilisation")
    if busy is None:
        return ""
    rate = f.get("device_write_rate_bytes_per_second")
    writing = f" (writing {_mbs(rate)})" if rate is not None else ""
    if waited >= MIN_SHARE and busy < waited / 2:
        return (f", yet the device was busy only {percent(busy)} of the time{writing}: the "
                "requests waited above it, in a throttle or QoS")
    if busy >= BUSY_DEVICE:
        return f", the device busy {percent(busy)} of the time{writing}"
    return ""


def _metadata_work(verdict: Verdict, record: FinishedOperation) -> str:
    """Why the operation counts as qcow2 metadata work (judge.judge's `metadata`)."""
    amplification = verdict.figures.get("write_amplification") or write_amplification(record)
    if amplification is not None and amplification >= AMPLIFIED:
        return (f"QEMU wrote {amplification:.1f}x the guest's memory, more than a vmstate can "
                "be, so each write also allocated qcow2 clusters")
    if record.operation == "delete":
        return "a delete is metadata work (refcounts, discards)"
    return f"a {record.operation} without memory is metadata work (the snapshot table, refcounts)"


def pace_sentence(verdict: Verdict, record: FinishedOperation) -> str:
    """What set the pace, in a sentence an operator understands, with the figures it rests
    on and the operation's work against its storage's usual (`_pace_against_usual`)."""
    f = {k: v for k, v in verdict.figures.items() if v is not None}  # a logged one may hold null
    waited, waits = _io_waits(f)
    busy = _device_busy(f, waited)
    usual = _pace_against_usual(verdict, record)
    pace = verdict.pace_setter
    delay = f.get("run_delay_share", 0.0)
    if pace == "size" and verdict.slowdown is None:
        return (f"Size set the pace: nothing held QEMU's writers back, so its own work did; "
                f"{usual}.")
    if pace == "size":
        return f"At its storage's usual pace: {usual}."
    if pace == "storage-slow":
        return f"Storage set the pace: {waits}{busy}; {usual}."
    if pace == "storage-contended":
        return (f"Storage contended by other writers set the pace: they wrote "
                f"{percent(f.get('other_writers_share', 0.0))} of the device's bytes, and "
                f"{waits}{busy}; {usual}.")
    if pace == "cpu":
        return (f"CPU starvation set the pace: QEMU's writers were runnable but not running "
                f"{percent(delay)} of the time (their run delay, waiting for a CPU); {usual}.")
    if pace == "qemu-cpu":
        return (f"QEMU's own CPU work set the pace: its writer threads were running "
                f"{percent(f.get('writer_running_share', 0.0))} of their samples (waiting for a "
                f"CPU only {percent(delay)}): the work itself, neither the storage nor a "
                f"shortage of CPU; {usual}.")
    if pace == "qcow2-metadata":
        return (f"qcow2 metadata set the pace: {_metadata_work(verdict, record)}, with QEMU's "
                f"writers working on the CPU "
                f"{percent(verdict.shares.get('qcow2-metadata', 0.0))} {shares_of(verdict)}; "
                f"{usual}.")
    if pace == "cache-mode":
        caches = ", ".join(record.disk_cache or ()) or "?"
        return (f"The disk cache mode set the pace: with cache={caches} QEMU's writes bypass "
                f"the page cache and its writers waited on the device in "
                f"{percent(f.get('writer_device_share', 0.0))} of their samples; {usual}.")
    ranked = sorted(verdict.shares.items(), key=lambda kv: kv[1], reverse=True)
    if pace == "mixed" and len(ranked) >= 2:
        (a, sa), (b, sb) = ranked[:2]
        return (f"No single cause set the pace: {CAUSES.get(a, a)} ({percent(sa)} "
                f"{shares_of(verdict)}) "
                f"and {CAUSES.get(b, b)} ({percent(sb)}) are within {MIXED_RATIO}x of each "
                f"other; {usual}.")
    samples = f.get("samples", 0)
    if pace == "too-short":
        return (f"Too short to judge: {samples:.0f} samples within the operation, fewer than "
                f"the {MIN_SAMPLES} that tell where its time went; {usual}.")
    if samples < MIN_SAMPLES:  # a verdict logged before too-short existed
        return (f"Unknown: the trace has {samples:.0f} samples within the operation, fewer "
                f"than the {MIN_SAMPLES} a verdict needs.")
    return (f"Unknown: no cause explains {percent(MIN_SHARE)} {shares_of(verdict)} or more; "
            f"{usual}.")


def shares_of(verdict: Verdict) -> str:
    """What the verdict's shares are of: for an operation slower than usual, the time beyond
    its expected duration (what made it slow; verdict/judge.py)."""
    slower = verdict.slowdown is not None and verdict.slowdown > SIZE_SLOWDOWN
    return "of the time beyond the expected" if slower else "of the time"


def _lowest(trace: Trace | None, gauge: str, logged: int | None) -> int | None:
    """A gauge's lowest value in the trace, or as the log has it without a trace."""
    values = [p.gauges[gauge] for p in trace.points if gauge in p.gauges] if trace else []
    return min(values) if values else logged


def _memory_waits(trace: Trace | None, record: FinishedOperation) -> float | None:
    """PSI memory "some" over the operation's time: from the trace, else from the log."""
    if record.duration_seconds <= 0:
        return None
    if trace is not None:
        psi = [p.counters["psi_memory_some"] for p in trace.points
               if trace.start <= p.t <= trace.end and "psi_memory_some" in p.counters]
        if len(psi) >= 2:
            return (psi[-1] - psi[0]) / record.duration_seconds
    if record.memory_stall_seconds is not None:
        return record.memory_stall_seconds / record.duration_seconds
    return None


def present_sentences(verdict: Verdict, record: FinishedOperation,
                      trace: Trace | None) -> list[str]:
    """The conditions that were there without setting the pace, said as such."""
    said = []
    for condition in verdict.present:
        if condition == "dirty-throttling":
            said.append(f"Dirty limits throttled the writers "
                        f"{percent(verdict.figures.get('writer_throttled_share') or 0.0)} of the "
                        "time, but did not set the pace: they only changed where the writers "
                        "waited.")
        elif condition == "direct-reclaim":
            said.append("Tasks short of free memory reclaimed it themselves (direct reclaim), "
                        "but that did not set the pace.")
        elif condition == "kswapd-reclaim":
            said.append("kswapd reclaimed memory in the background, but that did not set the "
                        "pace.")
        elif condition == "memory-pressure":
            share = _memory_waits(trace, record)
            said.append("Tasks waited on memory" + (f" {percent(share)} of the time" if share
                                                    is not None else "") +
                        " (PSI), but that did not set the pace.")
        elif condition == "low-memfree-ample-memavailable":
            free = _lowest(trace, "free", record.host_memory_free_min_bytes)
            available = _lowest(trace, "available", record.host_memory_available_min_bytes)
            low = (f"MemFree fell to {size_text(free)} while MemAvailable stayed at "
                   f"{size_text(available)} or more" if free is not None
                   and available is not None else "MemFree fell low while MemAvailable stayed "
                   "ample")
            said.append(f"{low}: the page cache filled with the snapshot's writes, no shortage "
                        "of memory; it did not set the pace.")
        else:
            said.append(f"{condition} was present, but did not set the pace.")
    return said
