"""The page of one operation (/operations/<id>): its facts, the verdict in words and charts of
its trace, drawn in the browser by the vendored uPlot (static/, MIT; no CDN: hypervisors are
often offline). Pure: HTML from a log entry, its trace and its verdict.

The figures are derived in verdict/explain.py, not in the browser (rates from the cumulative
counters, shares of time from the thread samples), so they are tested with the verdict they
stand beside, and inlined in the page as JSON: one request shows the trace with the verdict on it, where two
fetches (/api/operations/<id>/trace and /verdict) could find it evicted in between. Every text from the log
(domain and snapshot names are anyone's input) is escaped, and so is the inlined JSON.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import quote

from ..model.operation import FinishedOperation, Verdict
from ..model.trace import Trace
from ..verdict.explain import (
    CAUSES,
    charts,
    failure_sentence,
    pace_sentence,
    percent,
    present_sentences,
    shares_of,
    size_text,
)

# Served under /static/ with their type. The page names each with a hash of its content, so
# they can be cached for good and an upgrade still fetches the new ones.
STATIC_TYPES = {
    "uplot.iife.min.js": "text/javascript; charset=utf-8",
    "uplot.min.css": "text/css; charset=utf-8",
    "operation-page.js": "text/javascript; charset=utf-8",
    "landing-page.js": "text/javascript; charset=utf-8",
    "LICENSE.uplot": "text/plain; charset=utf-8",
}
STATIC_CACHE = ("Cache-Control", "public, max-age=31536000, immutable")

@functools.cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of static/ and its type; None for any name not in STATIC_TYPES."""
    if name not in STATIC_TYPES:
        return None
    return (resources.files(__package__).joinpath("static", name).read_bytes(),
            STATIC_TYPES[name])


def static_url(name: str, up: str = "") -> str:
    """The file's URL, naming its content so a cache never serves an old one. Relative, as
    every link of the pages (up: "../" from /operations/<id>), so that they also work under
    the path of a web.external-url that a proxy strips."""
    found = static_file(name)
    assert found is not None, name
    return f"{up}static/{name}?v={hashlib.sha256(found[0]).hexdigest()[:12]}"


# --- the page --------------------------------------------------------------------------------


def when(value: float, milliseconds: bool = False) -> str:
    """A time as the hypervisor's clock shows it, with its offset from UTC:
    '2027-01-15 09:00:00 +01:00' ('09:00:00.250 +01:00' with milliseconds); the landing
    page's too."""
    local = time.localtime(value)
    offset = time.strftime("%z", local)
    return (time.strftime("%Y-%m-%d %H:%M:%S", local)
            + (f".{int(value * 1000) % 1000:03d}" if milliseconds else "")
            + f" {offset[:3]}:{offset[3:]}")


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.2f} s" if value >= 1 or value == 0 else f"{value:.3f} s"


def facts(record: FinishedOperation) -> list[tuple[str, str]]:
    """The operation's facts as (name, text) rows, unescaped."""
    rows = [
        ("domain", record.domain), ("OpenStack instance", record.instance_name or ""),
        ("snapshot", record.snapshot or ""),
        ("operation", record.operation), ("kind", record.kind),
        ("memory", "yes" if record.memory else "no"),
        ("duration", _seconds(record.duration_seconds)),
        ("guest paused", _seconds(record.paused_seconds)),
        ("guest down", _seconds(record.down_seconds)),
        ("outcome", record.outcome + (f": {record.error}" if record.error else "")),
        ("start", f"{when(record.start, True)} (seen by {record.start_source or '?'})"),
        ("end", f"{when(record.end, True)} (seen by {record.end_source or '?'})"),
        ("uncertainty", _seconds(record.uncertainty_seconds)),
        ("disk cache", ", ".join(record.disk_cache or ())),
        ("storage", record.storage or ""),
        ("QEMU", record.qemu_version or ""),
        ("QEMU wrote", "" if record.qemu_written_bytes is None
         else size_text(record.qemu_written_bytes)),
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
.verdict.failed{background:#fbeeee;border-left-color:#b00}
#charts[data-state=error]{color:#b00}.chart{margin:1em 0}"""


def render(record: FinishedOperation, trace: Trace | None, verdict: Verdict | None) -> str:
    """The whole page; without a trace it says there is none, which is not an error (the
    verdict the log kept is still shown). A failed operation shows its error where the
    verdict would be, never a pace: it is not judged (a verdict logged before that rule is
    not shown either)."""
    e = html.escape
    name = (f"{record.operation} of {record.domain}"
            + (f" ({record.instance_name})" if record.instance_name else "")
            + (f" / {record.snapshot}" if record.snapshot else ""))
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts(record))
    judged = ""
    failed = record.outcome != "success"
    if failed:
        judged = f"""<section class="verdict failed"><p class=pace>{e(failure_sentence(record))}</p>
<p class=note>A failed operation gets no verdict: its error, not a pace, says why it ended.</p>
</section>"""
    elif verdict is not None:
        cause = CAUSES.get(verdict.pace_setter, verdict.pace_setter)
        present = "".join(f"<li>{e(s)}</li>" for s in present_sentences(verdict, record, trace))
        shares = ", ".join(f"{e(CAUSES.get(k, k))} {percent(v)}" for k, v in
                           sorted(verdict.shares.items(), key=lambda kv: kv[1], reverse=True))
        judged = f"""<section class=verdict><h2>Verdict: {e(cause)}</h2>
<p class=pace>{e(pace_sentence(verdict, record))}</p>
{f'<ul class=present>{present}</ul>' if present else ''}
<p class=note>Each cause's share {e(shares_of(verdict))}: {shares}.</p></section>"""
    if trace is None or not trace.points:
        why = ("No trace is kept for this operation: it was evicted (only the last "
               "<code>trace.operations</code> traces are kept, within "
               "<code>trace.max-bytes</code>), it ended before the flight recorder existed, or "
               "the flight recorder is off (<code>trace.operations</code> 0)." if trace is None
               else "Its trace has no points: the exporter stopped as the operation began.")
        body = (f"<p class=note>{why}"
                + ("" if verdict or failed else " Without a trace there is no verdict.") + "</p>")
        head = scripts = ""
    else:
        data = charts(trace)
        missing = (f"<p class=note>Not in this trace: {e(', '.join(data['missing']))}.</p>"
                   if data["missing"] else "")
        first, last = (round(data["x"][i], 1) + 0.0 for i in (0, -1))  # no -0.0
        span = f"{len(trace.points)} points from {first:+.1f} s to {last:+.1f} s around the operation"
        body = f"""<h2>Trace</h2>
<p class=note>{e(span)}, sampled every {trace.interval_seconds:g} s; the operation is shaded,
from its start (0 s) to its end ({data['end']:.2f} s). The thread states are shares of the
samples of the second up to each point.</p>
{missing}<div id=charts data-state=loading>The charts need JavaScript.</div>
<script type="application/json" id=trace-data>{_json_in_html(data)}</script>"""
        head = f'<link rel=stylesheet href="{static_url("uplot.min.css", "../")}">'
        scripts = (f'<script src="{static_url("uplot.iife.min.js", "../")}"></script>\n'
                   f'<script src="{static_url("operation-page.js", "../")}"></script>')
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(name)} - libvirt snapshot exporter</title>
{head}<style>{STYLE}</style></head><body>
<p><a href="../">&larr; all operations</a> &middot;
<a href="../?domain={e(quote(record.domain, safe=""))}">{e(record.domain)}'s operations</a></p>
<h1>{e(name)}</h1>
<table class=facts>{rows}</table>
{judged}
{body}
{scripts}
</body></html>
"""
