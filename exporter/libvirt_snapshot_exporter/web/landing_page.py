"""The landing page (/): the operations in flight, then the newest finished ones, in the
columns of the hand-run study. Pure: HTML from the view and the log's entries; every text
from libvirt or the log (domain and snapshot names are anyone's input) is escaped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..model.operation import FinishedOperation
from ..store.view import View

ROWS = 100  # finished operations on the landing page

STUDY_COLUMNS = (
    ("domain", "domain"), ("snapshot", "snapshot"), ("operation", "operation"),
    ("depth", "depth"), ("guest memory used", "guest_memory_used_bytes"),
    ("guest CPU", "guest_cpu_ratio"), ("duration", "duration_seconds"),
    ("guest paused", "paused_seconds"), ("kind", "kind"), ("memory", "memory"),
    ("outcome", "outcome"), ("QEMU", "qemu_version"), ("disk cache", "disk_cache"),
    ("host MemAvailable at start", "host_memory_available_start_bytes"),
    ("host MemAvailable min", "host_memory_available_min_bytes"),
    ("host MemFree min", "host_memory_free_min_bytes"),
    ("peak Dirty", "host_dirty_peak_bytes"), ("peak Writeback", "host_writeback_peak_bytes"),
    ("QEMU wrote", "qemu_written_bytes"), ("ended", "end"), ("verdict", "verdict"),
)
DURATION, OUTCOME = 6, 10  # the columns an operation in flight fills otherwise


def cell_text(key: str, value: Any) -> str:
    """A field as the table shows it, by the unit its key names: bytes in MB, decimal like
    the operation page's charts and words; a flag as yes or no."""
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
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def _cells(entry: dict[str, Any]) -> list[str]:
    return [html.escape(cell_text(key, entry.get(key))) for _, key in STUDY_COLUMNS]


def rows(in_flight: Sequence[dict[str, Any]], finished: Sequence[FinishedOperation]) -> list[str]:
    """In flight on top (running for how long), then finished ones linking to their page;
    a failed one is marked and its verdict cell says so (it gets no verdict: its error says
    why it ended)."""
    lines = []
    for entry in in_flight:
        cells = _cells(entry)
        cells[DURATION] = f"running {entry['elapsed_seconds']:.1f} s"
        cells[OUTCOME] = "in flight"
        lines.append("<tr class=running>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for record in finished:
        entry = record.to_json()
        cells = _cells(entry)
        cells[0] = f'<a href="/operations/{record.id}">{cells[0]}</a>'
        failed = record.outcome != "success"
        cells[-1] = ("failed" if failed else
                     html.escape(record.verdict.short()) if record.verdict else "")
        lines.append(("<tr class=failed>" if failed else "<tr>")
                     + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return lines


def render(view: View, in_flight: Sequence[dict[str, Any]], finished: Sequence[FinishedOperation],
           total: int, telemetry_path: str) -> str:
    """`finished` is the newest of the `total` logged; the page says where the rest are."""
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in STUDY_COLUMNS)
    shown = (f"the {len(finished)} newest of {total}; all of them in "
             f'<a href="/api/operations">/api/operations</a>' if total > len(finished) else "")
    qemu = view.versions.hypervisor if view.versions else "?"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>libvirt snapshot exporter</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}}tr.running{{background:#fe9}}
tr.failed{{background:#fdd}}
th{{background:#eee}}</style></head><body>
<h1>libvirt snapshot exporter</h1>
<p>Version {__version__} &middot; host {html.escape(view.hostname)} &middot; libvirt
{html.escape(view.uri)} ({'up' if view.up else 'DOWN'}) &middot; QEMU {html.escape(qemu)}
&middot; <a href="{html.escape(telemetry_path)}">metrics</a> &middot;
<a href="/api/operations">operations as JSON</a></p>
<h2>Snapshot operations, newest first</h2>
<p>{shown}</p>
<table><tr>{head}</tr>
{''.join(rows(in_flight, finished)) or '<tr><td colspan=21>no snapshot operation seen yet</td></tr>'}
</table></body></html>
"""
