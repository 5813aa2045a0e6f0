"""The landing page (/): the operations in flight, then the newest finished ones, in the
columns of the hand-run study, what a person looks for first on the left (what set the pace
and how long the guest was paused), so that they are on screen at 1,400 px without scrolling.
Pure: HTML from the view and the log's entries; every text from libvirt or the log (domain
and snapshot names are anyone's input, and so is the `?domain=` filter) is escaped.

The page updates itself: static/landing-page.js asks /api/operations every few seconds
whether anything started, ended or was judged, and then fetches this page again (with its
filter) to replace the table; without JavaScript the page reloads itself while an operation
it shows is in flight.

What it shows of the log (`Logged`: its rows and the domain menu) is made once per version of
the log and filter (routes.App keeps them), from the log's indexes: a request costs the
operations in flight and the page's own rows, never the log's length.
"""

from __future__ import annotations

import html
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..model.operation import FinishedOperation
from ..store.view import View
from .operation_page import static_url, when

ROWS = 100  # finished operations on the landing page
POLL_SECONDS = 2  # how often landing-page.js asks whether anything changed
RELOAD_SECONDS = 5  # without JavaScript, while an operation it shows is in flight
SIGNATURE_NEWEST = 3  # the newest operations whose verdict the signature follows

# (title, key of the entry): the verdict and the guest's pause right after what the operation
# is, then the study's other columns.
STUDY_COLUMNS = (
    ("domain", "domain"), ("snapshot", "snapshot"), ("operation", "operation"),
    ("verdict", "verdict"), ("guest paused", "paused_seconds"),
    ("guest down", "down_seconds"), ("duration", "duration_seconds"), ("outcome", "outcome"),
    ("ended", "end"),
    ("kind", "kind"), ("memory", "memory"), ("depth", "depth"),
    ("guest memory used", "guest_memory_used_bytes"), ("guest CPU", "guest_cpu_ratio"),
    ("QEMU", "qemu_version"), ("disk cache", "disk_cache"),
    ("host MemAvailable at start", "host_memory_available_start_bytes"),
    ("host MemAvailable min", "host_memory_available_min_bytes"),
    ("host MemFree min", "host_memory_free_min_bytes"),
    ("peak Dirty", "host_dirty_peak_bytes"), ("peak Writeback", "host_writeback_peak_bytes"),
    ("QEMU wrote", "qemu_written_bytes"),
)
COLUMN = {key: index for index, (_, key) in enumerate(STUDY_COLUMNS)}
HINTS = {  # the header's tooltip
    "verdict": "what set the pace, and how many times slower than expected it was "
               "(the operation's page says why)",
    "paused_seconds": "how long the guest was paused by the operation",
    "down_seconds": "a restore's: how long the guest was stopped, from its save's start "
                    "until this restore resumed it",
    "end": "the hypervisor's local time, with its offset from UTC",
}


def cell_text(key: str, value: Any) -> str:
    """A field as the table shows it, by the unit its key names: bytes in MB, decimal like
    the operation page's charts and words; a flag as yes or no; a time with its zone."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key.endswith("_bytes"):
        return f"{value / 10**6:,.0f} MB"
    if key.endswith("_seconds"):
        return f"{value:,.2f} s"
    if key.endswith("_ratio"):
        return f"{value * 100:.0f} %"
    if key in ("end", "start"):
        return when(value)
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


NAMES = ("domain", "snapshot")


def _cells(entry: dict[str, Any]) -> list[str]:
    """The row's cells; an OpenStack instance's name beside its domain (instance-XXXXXXXX)."""
    cells = [html.escape(cell_text(key, entry.get(key))) for _, key in STUDY_COLUMNS]
    for key in NAMES:
        cells[COLUMN[key]] = f'<span class=name title="{cells[COLUMN[key]]}">{cells[COLUMN[key]]}</span>'
    if entry.get("instance_name"):
        name = html.escape(entry["instance_name"])
        cells[COLUMN["domain"]] += (f' <span class="name instance" title="OpenStack instance '
                                    f'{name}">{name}</span>')
    return cells


def _time(value: float) -> str:
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value))
    return f'<time datetime="{iso}{when(value)[-6:]}">{html.escape(when(value))}</time>'


def rows(in_flight: Sequence[dict[str, Any]], finished: Sequence[FinishedOperation]) -> list[str]:
    """In flight on top (running for how long), then finished ones whose domain links to
    their page; a failed one is marked by its row's style, its outcome cell (with its error
    as the cell's tooltip) and its verdict cell (it gets no verdict: its error says why it
    ended)."""
    lines = []
    for entry in in_flight:
        cells = _cells(entry)
        elapsed = float(entry.get("elapsed_seconds") or 0.0)
        cells[COLUMN["duration_seconds"]] = f"running {elapsed:.1f} s"
        cells[COLUMN["outcome"]] = "in flight"
        if entry.get("start"):
            cells[COLUMN["end"]] = "started " + _time(entry["start"])
        lines.append("<tr class=running>" + "".join(
            f'<td class=elapsed data-elapsed="{elapsed:.3f}">{c}</td>'
            if i == COLUMN["duration_seconds"] else f"<td>{c}</td>"
            for i, c in enumerate(cells)) + "</tr>")
    for record in finished:
        entry = record.to_json()
        cells = _cells(entry)
        cells[0] = f'<a href="operations/{record.id}">{cells[0]}</a>'
        cells[COLUMN["end"]] = _time(record.end)
        failed = record.outcome != "success"
        if failed:
            error = html.escape(record.error or "no error recorded", quote=True)
            cells[COLUMN["outcome"]] = f'<span class=bad title="{error}">&#x2717; failed</span>'
            cells[COLUMN["verdict"]] = "failed: no verdict"
        else:
            cells[COLUMN["verdict"]] = html.escape(record.verdict.short()) if record.verdict else ""
        lines.append(("<tr class=failed>" if failed else "<tr>")
                     + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return lines


def domain_param(params: dict[str, list[str]]) -> str:
    """The `?domain=` filter: the last one given; '' (every domain) without one."""
    values = params.get("domain") or [""]
    return values[-1]


def signature(in_flight: Sequence[dict[str, Any]], finished: Sequence[FinishedOperation],
              total: int) -> str:
    """What changes when an operation starts, ends or is judged, as landing-page.js computes
    it from /api/operations?limit=SIGNATURE_NEWEST (the whole log, unfiltered)."""
    newest = " ".join(e.id + ("v" if e.verdict else "") for e in finished[:SIGNATURE_NEWEST])
    return " ".join(sorted(str(e.get("id", "")) for e in in_flight)) + f"|{total}|{newest}"


def _domain_filter(domains: Collection[str], domain: str) -> str:
    e = html.escape
    known = sorted(set(domains) | ({domain} if domain else set()))
    options = "".join(f'<option value="{e(d)}"{" selected" if d == domain else ""}>{e(d)}</option>'
                      for d in known)
    return (f'<form id=filter method=get action="./"><label>domain '
            f'<select name=domain><option value="">all domains</option>{options}</select>'
            f"</label> <button>show</button></form>")


def _shown(count: int, matching: int, total: int, domain: str) -> str:
    api = 'all of them in <a href="api/operations">/api/operations</a>'
    if not domain:
        return f"the {count} newest of {total}; {api}" if total > count else ""
    named = f"domain <b>{html.escape(domain)}</b>"
    if not matching:
        return f'no operation of {named} among the {total} logged; <a href="./">all domains</a>'
    head = (f"the {count} newest of the {matching} operations of {named}" if matching > count
            else f"the {matching} operation{'s' if matching > 1 else ''} of {named}")
    return f'{head} among the {total} logged; <a href="./">all domains</a>'


# Cells on one line; a name longer than .name's width ends in an ellipsis (whole in its
# tooltip and on the operation's page), so that no name pushes the verdict off screen.
STYLE = """body{font-family:sans-serif;margin:1.5em}
table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
td{white-space:nowrap}th{background:#eee;font-weight:normal}
td:nth-child(-n+4),th:nth-child(-n+4){text-align:left}
.name{display:inline-block;max-width:15em;overflow:hidden;text-overflow:ellipsis;
vertical-align:bottom}.instance{color:#555;max-width:12em}
td:nth-child(4){font-weight:bold}th:nth-child(4),th:nth-child(5){background:#dde6f3}
tr.running{background:#fe9}
tr.failed{background:#fdd}tr.failed td:first-child{box-shadow:inset 4px 0 #b00}
.bad{color:#b00;font-weight:bold;white-space:nowrap}
.note{color:#555;max-width:75em}#filter{margin:.5em 0}#filter select{max-width:30em}"""


@dataclass(frozen=True)
class Logged:
    """What the page shows of the log for one `?domain=` filter, made once per version of the
    log: the ROWS newest of the domain's operations (of all for '') as HTML rows, how many it
    has, the domain menu, and the newest operations the page's signature follows."""

    rows: str
    shown: int
    matching: int  # the domain's operations in the log; all of them for ''
    total: int
    domains: frozenset[str]
    menu: str
    newest: tuple[FinishedOperation, ...]  # SIGNATURE_NEWEST of every domain

    @classmethod
    def of(cls, shown: Sequence[FinishedOperation], matching: int, total: int,
           domains: Collection[str], newest: Sequence[FinishedOperation], domain: str) -> Logged:
        """`shown`: the newest of the domain's `matching` operations (the page shows ROWS)."""
        return cls("".join(rows((), shown[:ROWS])), min(len(shown), ROWS), matching, total,
                   frozenset(domains), _domain_filter(domains, domain),
                   tuple(newest[:SIGNATURE_NEWEST]))


def render(view: View, in_flight: Sequence[dict[str, Any]], logged: Logged,
           telemetry_path: str, domain: str = "") -> str:
    """The operations in flight of `domain` (every domain when it is '') over what `logged`
    shows of the log, saying where the rest are."""
    e = html.escape
    head = "".join(f'<th title="{e(HINTS[key])}">{e(title)}</th>' if key in HINTS
                   else f"<th>{e(title)}</th>" for title, key in STUDY_COLUMNS)
    flying = [o for o in in_flight if not domain or o.get("domain") == domain]
    shown = _shown(logged.shown, logged.matching, logged.total, domain)
    unlogged = {str(o.get("domain", "")) for o in in_flight} - logged.domains
    menu = _domain_filter(logged.domains | unlogged, domain) if unlogged else logged.menu
    qemu = view.versions.hypervisor if view.versions else "?"
    empty = ("no snapshot operation seen yet" if not domain else
             "no snapshot operation of this domain in the log")
    reload = (f'<noscript><meta http-equiv=refresh content="{RELOAD_SECONDS}"></noscript>'
              if flying else "")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>libvirt snapshot exporter</title>{reload}
<style>{STYLE}</style></head><body>
<h1>libvirt snapshot exporter</h1>
<p>Version {__version__} &middot; host {e(view.hostname)} &middot; libvirt
{e(view.uri)} ({'up' if view.up else 'DOWN'}) &middot; QEMU {e(qemu)}
&middot; <a href="{e(telemetry_path.lstrip("/"))}">metrics</a> &middot;
<a href="api/operations">operations as JSON</a> &middot; <a href="runbook">runbook</a></p>
<h2>Snapshot operations, newest first</h2>
{menu}
<p class=note id=refresh data-poll="{POLL_SECONDS}">This page updates itself: it checks every
{POLL_SECONDS} s for operations starting, ending or being judged (without JavaScript, it reloads
every {RELOAD_SECONDS} s while an operation is in flight). Times are the hypervisor's, with
their offset from UTC. The verdict: what set the pace, and how many times slower than expected
the operation was; each domain links to its operation's page, an OpenStack instance's name
in grey beside its domain.
<span id=checked></span></p>
<div id=live data-signature="{e(signature(in_flight, logged.newest, logged.total))}">
<p id=shown>{shown}</p>
<table id=operations><tr>{head}</tr>
{''.join(rows(flying, ())) + logged.rows
 or f'<tr><td colspan={len(STUDY_COLUMNS)}>{empty}</td></tr>'}
</table></div>
<script src="{static_url("landing-page.js")}"></script>
</body></html>
"""
