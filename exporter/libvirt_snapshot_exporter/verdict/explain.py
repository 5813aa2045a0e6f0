"""An operation's verdict explained for a person: the figures charted from its trace (rates
from the cumulative counters, shares of time from the thread samples) and the verdict in
words, with the figures it rests on. Pure; the operation page (web/) and bench's plots show
the same charts and sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..model.operation import FinishedOperation, Verdict
from ..model.trace import Point, Trace
from .judge import MIN_SAMPLES, MIN_SHARE, MIXED_RATIO, RATE_MIN_BYTES, writer_waits

MB = 10**6
MIB = 2**20

CAUSES = {
    "size": "size", "storage-slow": "slow storage", "storage-contended": "contended storage",
    "cpu": "CPU starvation", "cache-mode": "the disk cache mode",
    "qcow2-metadata": "qcow2 metadata", "mixed": "mixed",
    "unknown": "unknown",
}
SHARE_WINDOW = 1.0  # seconds of thread samples each point of the thread chart sums
WAIT_SERIES = (("running", "running"), ("device", "waiting on the device"),
               ("throttled", "throttled by dirty limits"), ("reclaim", "reclaiming memory"))



# --- figures --------------------------------------------------------------------------------


def _rate(points: Sequence[Point], key: str, scale: float) -> list[float | None]:
    """Per second between each point and the one before it (None where either lacks the
    counter, or it went back: a revert's new QEMU)."""
    values: list[float | None] = [None]
    for a, b in zip(points, points[1:], strict=False):
        dt = b.t - a.t
        if key in a.counters and key in b.counters and dt > 0 and b.counters[key] >= a.counters[key]:
            values.append(round((b.counters[key] - a.counters[key]) / dt * scale, 3))
        else:
            values.append(None)
    return values


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
    def mib(gauges: Sequence[tuple[str, str]]) -> list[tuple[str, list[float | None]]]:
        return [(label, [round(p.gauges[k] / MIB, 1) if k in p.gauges else None
                         for p in points]) for k, label in gauges]

    shares = _writer_shares(points)
    specs = [
        ("host memory", "MiB", mib((("free", "MemFree"), ("available", "MemAvailable"),
                                    ("cached", "Cached")))),
        # apart: a few hundred MiB beside tens of GiB would be a flat line
        ("dirty data", "MiB", mib((("dirty", "Dirty"), ("writeback", "Writeback"),
                                   ("dirty_threshold", "dirty threshold")))),
        ("writes", "MB/s", [("device (" + (trace.device or "?") + ")",
                             _rate(points, "device_write_bytes", 1 / MB)),
                            ("QEMU", _rate(points, "qemu_write_bytes", 1 / MB))]),
        ("pressure (PSI some)", "% of time",
         [(resource, _rate(points, f"psi_{resource}_some", 100))
          for resource in ("io", "memory", "cpu")]),
        ("QEMU's writer threads (over the last second)", "% of samples",
         [(label, [None if s is None else s.get(cls, 0.0) for s in shares])
          for cls, label in WAIT_SERIES]),
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


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB" if value >= 1e9 else f"{value / MB:.0f} MB"


def _mbs(value: float) -> str:
    return f"{value / MB:.0f} MB/s"


def percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def _pace_against_usual(verdict: Verdict, record: FinishedOperation) -> str:
    """'1.18 GB at 39 MB/s against 120 MB/s usual: 3.1x slower than expected (10.0 s)'."""
    written, rate = record.qemu_written_bytes, verdict.figures.get(
        "reference_rate_bytes_per_second")
    if verdict.expected_seconds is None or verdict.slowdown is None or not written or not rate:
        return ("no expected duration yet: this host has logged no successful internal create "
                f"with memory that wrote {RATE_MIN_BYTES // MIB} MiB or more to learn its "
                "storage's rate from")
    observed = written / record.duration_seconds if record.duration_seconds > 0 else rate
    pace = (f"{verdict.slowdown:.1f}x slower than expected" if verdict.slowdown > 1 else
            f"{verdict.slowdown:.1f}x the expected duration")
    return (f"{_gb(written)} at {_mbs(observed)} against {_mbs(rate)} usual: {pace} "
            f"({verdict.expected_seconds:.1f} s)")


def pace_sentence(verdict: Verdict, record: FinishedOperation) -> str:
    """What set the pace, in a sentence an operator understands."""
    f = {k: v for k, v in verdict.figures.items() if v is not None}  # a logged one may hold null
    waited = f.get("writer_device_share", 0.0) + f.get("writer_throttled_share", 0.0)
    busy = f.get("device_utilisation")
    device = (f"a device busy {percent(busy)} of the time" if busy is not None else "the device") \
        + f" (in {percent(waited)} of their samples)"
    usual = _pace_against_usual(verdict, record)
    pace = verdict.pace_setter
    if pace == "size" and verdict.slowdown is None:
        return (f"Size set the pace: nothing held QEMU's writers back, so its own bytes did; "
                f"{usual}.")
    if pace == "size":
        return (f"Size set the pace: the operation took as long as its bytes take at this "
                f"host's usual rate; {usual}.")
    if pace == "storage-slow":
        return f"Storage set the pace: QEMU's writers waited on {device}; {usual}."
    if pace == "storage-contended":
        return (f"Storage contended by other writers set the pace: they wrote "
                f"{percent(f.get('other_writers_share', 0.0))} of the device's bytes, and QEMU's "
                f"writers waited on {device}; {usual}.")
    if pace == "cpu":
        return (f"CPU starvation set the pace: QEMU's writers were runnable but not running "
                f"{percent(f.get('run_delay_share', 0.0))} of the time; {usual}.")
    if pace == "cache-mode":
        caches = ", ".join(record.disk_cache or ()) or "?"
        return (f"The disk cache mode set the pace: with cache={caches} QEMU's writes bypass "
                f"the page cache and its writers waited on the device in {percent(waited)} of "
                f"their samples; {usual}.")
    ranked = sorted(verdict.shares.items(), key=lambda kv: kv[1], reverse=True)
    if pace == "mixed":
        (a, sa), (b, sb) = ranked[:2]
        return (f"No single cause set the pace: {CAUSES.get(a, a)} ({percent(sa)} of the time) "
                f"and {CAUSES.get(b, b)} ({percent(sb)}) are within {MIXED_RATIO}x of each "
                f"other; {usual}.")
    if f.get("samples", 0) < MIN_SAMPLES:
        return (f"Unknown: the trace has {f.get('samples', 0):.0f} samples within the "
                f"operation, fewer than the {MIN_SAMPLES} a verdict needs.")
    return (f"Unknown: no cause explains {percent(MIN_SHARE)} of the time or more; {usual}.")


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
            low = (f"MemFree fell to {free / MIB:,.0f} MiB while MemAvailable stayed at "
                   f"{available / MIB:,.0f} MiB or more" if free is not None
                   and available is not None else "MemFree fell low while MemAvailable stayed "
                   "ample")
            said.append(f"{low}: the page cache filled with the snapshot's writes, no shortage "
                        "of memory; it did not set the pace.")
        else:
            said.append(f"{condition} was present, but did not set the pace.")
    return said


