"""The page of one operation (/operations/<id>): its facts, the verdict in words and charts of
its trace, drawn in the browser by the vendored uPlot (static/, MIT; no CDN: hypervisors are
often offline). Pure: HTML from a log entry, its trace and its verdict.

The figures are derived here, not in the browser (rates from the cumulative counters, shares
of time from the thread samples), so they are tested with the verdict they stand beside, and
inlined in the page as JSON: one request shows the trace with the verdict on it, where two
fetches (/api/operations/<id>/trace and /verdict) could find it evicted in between. Every text from the log
(domain and snapshot names are anyone's input) is escaped, and so is the inlined JSON.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ..model.operation import FinishedOperation, Verdict
from ..model.trace import Point, Trace
from ..verdict.judge import MIN_SAMPLES, MIN_SHARE, MIXED_RATIO, RATE_MIN_BYTES, writer_waits

MB = 10**6
MIB = 2**20
# Served under /static/ with their type. The page names each with a hash of its content, so
# they can be cached for good and an upgrade still fetches the new ones.
STATIC_TYPES = {
    "uplot.iife.min.js": "text/javascript; charset=utf-8",
    "uplot.min.css": "text/css; charset=utf-8",
    "operation-page.js": "text/javascript; charset=utf-8",
    "LICENSE.uplot": "text/plain; charset=utf-8",
}
STATIC_CACHE = ("Cache-Control", "public, max-age=31536000, immutable")

CAUSES = {
    "size": "size", "storage-slow": "slow storage", "storage-contended": "contended storage",
    "cpu": "CPU starvation", "cache-mode": "the disk cache mode",
    "qcow2-metadata": "qcow2 metadata", "mixed": "mixed",
    "unknown": "unknown",
}
SHARE_WINDOW = 1.0  # seconds of thread samples each point of the thread chart sums
WAIT_SERIES = (("running", "running"), ("device", "waiting on the device"),
               ("throttled", "throttled by dirty limits"), ("reclaim", "reclaiming memory"))


@functools.cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of static/ and its type; None for any name not in STATIC_TYPES."""
    if name not in STATIC_TYPES:
        return None
    return (resources.files(__package__).joinpath("static", name).read_bytes(),
            STATIC_TYPES[name])


def static_url(name: str) -> str:
    """The file's URL, naming its content so a cache never serves an old one."""
    found = static_file(name)
    assert found is not None, name
    return f"/static/{name}?v={hashlib.sha256(found[0]).hexdigest()[:12]}"


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


def _pct(value: float) -> str:
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
    device = (f"a device busy {_pct(busy)} of the time" if busy is not None else "the device") \
        + f" (in {_pct(waited)} of their samples)"
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
                f"{_pct(f.get('other_writers_share', 0.0))} of the device's bytes, and QEMU's "
                f"writers waited on {device}; {usual}.")
    if pace == "cpu":
        return (f"CPU starvation set the pace: QEMU's writers were runnable but not running "
                f"{_pct(f.get('run_delay_share', 0.0))} of the time; {usual}.")
    if pace == "cache-mode":
        caches = ", ".join(record.disk_cache or ()) or "?"
        return (f"The disk cache mode set the pace: with cache={caches} QEMU's writes bypass "
                f"the page cache and its writers waited on the device in {_pct(waited)} of "
                f"their samples; {usual}.")
    ranked = sorted(verdict.shares.items(), key=lambda kv: kv[1], reverse=True)
    if pace == "mixed":
        (a, sa), (b, sb) = ranked[:2]
        return (f"No single cause set the pace: {CAUSES.get(a, a)} ({_pct(sa)} of the time) "
                f"and {CAUSES.get(b, b)} ({_pct(sb)}) are within {MIXED_RATIO}x of each "
                f"other; {usual}.")
    if f.get("samples", 0) < MIN_SAMPLES:
        return (f"Unknown: the trace has {f.get('samples', 0):.0f} samples within the "
                f"operation, fewer than the {MIN_SAMPLES} a verdict needs.")
    return (f"Unknown: no cause explains {_pct(MIN_SHARE)} of the time or more; {usual}.")


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
                        f"{_pct(verdict.figures.get('writer_throttled_share') or 0.0)} of the "
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
            said.append("Tasks waited on memory" + (f" {_pct(share)} of the time" if share
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


# --- the page --------------------------------------------------------------------------------


def _when(value: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)) + f".{int(value * 1000) % 1000:03d}"


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.2f} s" if value >= 1 or value == 0 else f"{value:.3f} s"


def facts(record: FinishedOperation) -> list[tuple[str, str]]:
    """The operation's facts as (name, text) rows, unescaped."""
    rows = [
        ("domain", record.domain), ("snapshot", record.snapshot or ""),
        ("operation", record.operation), ("kind", record.kind),
        ("memory", "yes" if record.memory else "no"),
        ("duration", _seconds(record.duration_seconds)),
        ("guest paused", _seconds(record.paused_seconds)),
        ("outcome", record.outcome + (f": {record.error}" if record.error else "")),
        ("start", f"{_when(record.start)} (seen by {record.start_source or '?'})"),
        ("end", f"{_when(record.end)} (seen by {record.end_source or '?'})"),
        ("uncertainty", _seconds(record.uncertainty_seconds)),
        ("disk cache", ", ".join(record.disk_cache or ())),
        ("QEMU", record.qemu_version or ""),
        ("QEMU wrote", "" if record.qemu_written_bytes is None
         else f"{record.qemu_written_bytes / MIB:,.0f} MiB"),
    ]
    return [(name, text) for name, text in rows if text]


def _json_in_html(data: Any) -> str:
    """JSON that cannot end its <script> element early nor open a comment."""
    return (json.dumps(data, separators=(",", ":")).replace("&", "\\u0026")
            .replace("<", "\\u003c").replace(">", "\\u003e"))


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1250px;color:#222}
table.facts{border-collapse:collapse;font-size:90%}
table.facts td,table.facts th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
table.facts th{background:#eee;font-weight:normal}
.verdict{background:#f4f7fb;border-left:4px solid #36c;padding:.4em 1em;margin:1em 0}
.verdict .pace{font-size:115%}.note{color:#555}
#charts[data-state=error]{color:#b00}.chart{margin:1em 0}"""


def render(record: FinishedOperation, trace: Trace | None, verdict: Verdict | None) -> str:
    """The whole page; without a trace it says there is none, which is not an error (the
    verdict the log kept is still shown)."""
    e = html.escape
    name = f"{record.operation} of {record.domain}" + (
        f" / {record.snapshot}" if record.snapshot else "")
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts(record))
    judged = ""
    if verdict is not None:
        cause = CAUSES.get(verdict.pace_setter, verdict.pace_setter)
        present = "".join(f"<li>{e(s)}</li>" for s in present_sentences(verdict, record, trace))
        shares = ", ".join(f"{e(CAUSES.get(k, k))} {_pct(v)}" for k, v in
                           sorted(verdict.shares.items(), key=lambda kv: kv[1], reverse=True))
        judged = f"""<section class=verdict><h2>Verdict: {e(cause)}</h2>
<p class=pace>{e(pace_sentence(verdict, record))}</p>
{f'<ul class=present>{present}</ul>' if present else ''}
<p class=note>Shares of the operation's time supporting each cause: {shares}.</p></section>"""
    if trace is None:
        body = ("<p class=note>No trace is kept for this operation: it was evicted (only the "
                "last <code>trace.operations</code> traces are kept, within "
                "<code>trace.max-bytes</code>), it ended before the flight recorder existed, "
                "or the flight recorder is off (<code>trace.operations</code> 0)."
                + ("" if verdict else " Without a trace there is no verdict.") + "</p>")
        head = scripts = ""
    else:
        data = charts(trace)
        missing = (f"<p class=note>Not in this trace: {e(', '.join(data['missing']))}.</p>"
                   if data["missing"] else "")
        points = len(trace.points)
        first, last = (round(data["x"][i], 1) + 0.0 for i in (0, -1))  # no -0.0
        span = (f"{points} points from {first:+.1f} s to {last:+.1f} s around "
                f"the operation" if points else "no points")
        body = f"""<h2>Trace</h2>
<p class=note>{e(span)}, sampled every {trace.interval_seconds:g} s; the operation is shaded,
from its start (0 s) to its end ({data['end']:.2f} s). The thread states are shares of the
samples of the second up to each point.</p>
{missing}<div id=charts data-state=loading>The charts need JavaScript.</div>
<script type="application/json" id=trace-data>{_json_in_html(data)}</script>"""
        head = f'<link rel=stylesheet href="{static_url("uplot.min.css")}">'
        scripts = (f'<script src="{static_url("uplot.iife.min.js")}"></script>\n'
                   f'<script src="{static_url("operation-page.js")}"></script>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(name)} - libvirt snapshot exporter</title>
{head}<style>{STYLE}</style></head><body>
<p><a href="/">&larr; all operations</a></p>
<h1>{e(name)}</h1>
<table class=facts>{rows}</table>
{judged}
{body}
{scripts}
</body></html>
"""
