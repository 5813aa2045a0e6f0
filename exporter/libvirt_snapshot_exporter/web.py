"""HTTP: /metrics (prometheus_client's WSGI app), the landing page, health, /api/operations."""

from __future__ import annotations

import html
import json
import logging
import socketserver
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from . import __version__
from .oplog import OperationsLog
from .state import StateStore

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

STUDY_COLUMNS = (
    ("domain", "domain"), ("snapshot", "snapshot"), ("operation", "operation"),
    ("depth", "level"), ("guest memory used", "guest_memory_used_bytes"),
    ("guest CPU", "guest_cpu_ratio"), ("duration", "duration_seconds"),
    ("guest paused", "paused_seconds"), ("kind", "kind"), ("memory", "memory"),
    ("outcome", "outcome"), ("QEMU", "qemu_version"), ("disk cache", "disk_cache"),
    ("host MemAvailable at start", "host_memory_available_start_bytes"),
    ("host MemAvailable min", "host_memory_available_min_bytes"),
    ("host MemFree min", "host_memory_free_min_bytes"),
    ("peak Dirty", "host_dirty_peak_bytes"), ("peak Writeback", "host_writeback_peak_bytes"),
    ("QEMU wrote", "qemu_written_bytes"), ("ended", "end"),
)


def _fmt(key: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    if key.endswith("_bytes"):
        return f"{value / 2**20:,.0f} MiB"
    if key.endswith("_seconds"):
        return f"{value:,.2f} s"
    if key.endswith("_ratio"):
        return f"{value * 100:.0f} %"
    if key in ("end", "start"):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


class App:
    def __init__(self, store: StateStore, oplog: OperationsLog, registry: CollectorRegistry,
                 telemetry_path: str) -> None:
        self.store = store
        self.oplog = oplog
        self.telemetry_path = telemetry_path
        self.metrics_app = make_wsgi_app(registry)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == self.telemetry_path:
            return self.metrics_app(environ, start_response)
        if path == "/-/healthy":
            return self._send(start_response, "200 OK", "text/plain", b"OK\n")
        if path == "/api/operations":
            body = json.dumps(self.operations(), indent=1).encode()
            return self._send(start_response, "200 OK", "application/json", body)
        if path == "/":
            return self._send(start_response, "200 OK", "text/html; charset=utf-8",
                              self.landing().encode())
        return self._send(start_response, "404 Not Found", "text/plain", b"not found\n")

    @staticmethod
    def _send(start_response: StartResponse, status: str, ctype: str, body: bytes):
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    def operations(self) -> dict[str, Any]:
        """Operations in flight first, then the log, newest first."""
        now = time.time()
        in_flight = []
        for item in self.store.view.in_flight:
            op = item.operation
            in_flight.append({
                "domain": op.domain, "snapshot": op.snapshot, "operation": op.operation,
                "kind": op.kind, "memory": op.memory, "level": op.depth,
                "start": round(op.start, 3), "elapsed_seconds": round(now - op.start, 3),
                "start_source": op.start_source, "progress_estimate": item.progress_estimate,
                "memory_processed_bytes": op.memory_processed_bytes,
                "memory_remaining_bytes": op.memory_remaining_bytes,
                **item.context,
            })
        finished = [{**e, "level": e.get("depth")} for e in self.oplog.entries()]
        return {"in_flight": in_flight, "operations": finished}

    def landing(self) -> str:
        view = self.store.view
        data = self.operations()
        head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in STUDY_COLUMNS)
        rows = []
        for entry in data["in_flight"]:
            cells = [html.escape(_fmt(key, entry.get(key))) for _, key in STUDY_COLUMNS]
            cells[6] = f"running {entry['elapsed_seconds']:.1f} s"
            cells[10] = "in flight"
            rows.append("<tr class=running>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        for entry in data["operations"]:
            cells = [html.escape(_fmt(key, entry.get(key))) for _, key in STUDY_COLUMNS]
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        versions = view.versions
        qemu = versions.hypervisor if versions else "?"
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>libvirt snapshot exporter</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:90%}}
td,th{{border:1px solid #ccc;padding:.2em .5em;text-align:right}}tr.running{{background:#fe9}}
th{{background:#eee}}</style></head><body>
<h1>libvirt snapshot exporter</h1>
<p>Version {__version__} &middot; host {html.escape(view.hostname)} &middot; libvirt
{html.escape(view.uri)} ({'up' if view.up else 'DOWN'}) &middot; QEMU {html.escape(qemu)}
&middot; <a href="{html.escape(self.telemetry_path)}">metrics</a> &middot;
<a href="/api/operations">operations as JSON</a></p>
<h2>Snapshot operations, newest first</h2>
<table><tr>{head}</tr>
{''.join(rows) or '<tr><td colspan=20>no snapshot operation seen yet</td></tr>'}
</table></body></html>
"""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(app: App, host: str, port: int) -> ThreadingWSGIServer:
    """Bind now (so a bad address fails at startup); the caller runs serve_forever()."""
    return make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
