"""HTTP: /metrics (text from exposition.MetricsRenderer), the landing page, health, /api/operations
and each operation's trace (/api/operations/<id>/trace, from the flight recorder), verdict and
page (/operations/<id>, page.py) with the static files it needs (/static/).

Served by wsgiref's threading server, hardened: optional TLS and basic auth from the web config
file (webconfig.py), bounds on what slow, silent or garbage-speaking clients can hold, GET and
HEAD only, and no request that can end in a traceback: whatever fails answers 500 and logs one
line. The operations API is paged and each page's JSON is cached until the log changes, so
clients looping on it cost little more than the bytes they fetch.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import html
import io
import json
import logging
import re
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client.exposition import gzip_accepted

from . import __version__
from . import page as operation_page
from .oplog import OperationsLog
from .records import FinishedOperation, Verdict
from .state import StateStore
from .trace import Trace, from_json
from .verdict import judge, reference_rate
from .webconfig import BasicAuth, WebConfig

log = logging.getLogger(__name__)

SERVER = ("Server", "libvirt-snapshot-exporter")  # no Python version for scanners
METHODS = ("GET", "HEAD")
PAGE_DEFAULT = 1000  # operations per /api/operations page unless ?limit= says otherwise
PAGE_MAXIMUM = 10_000
OFFSET_MAXIMUM = 10**9  # beyond any log size: answers an empty page
LANDING_ROWS = 100  # finished operations on the landing page
PAGE_CACHE_SIZE = 16  # pages of the current log kept rendered
GZIP_LEVEL = 6  # zlib's default: most of level 9's gain for a fraction of its CPU

HEAD_TIMEOUT = 5.0  # seconds a client has to send its request head, TLS handshake included
IO_TIMEOUT = 30.0  # seconds any single read or write may stall
MAX_CONNECTIONS = 128  # a scraper needs one at a time; each costs a thread while open

StartResponse = Callable[..., Any]
RenderMetrics = Callable[[str, Sequence[str]], tuple[bytes, str]]


class BadRequest(ValueError):
    """A query parameter out of range; the message says which."""


class Traces(Protocol):
    """Where operation traces are found (the flight recorder)."""

    def get(self, trace_id: str) -> bytes | None: ...


TRACE_PATH = re.compile(r"/api/operations/([0-9a-f]{16})/(trace|verdict)")
OPERATION_PATH = re.compile(r"/operations/([0-9a-f]{16})")
STATIC_PATH = re.compile(r"/static/([A-Za-z0-9._-]+)")
HTML = "text/html; charset=utf-8"

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


def _int_param(params: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = params.get(name)
    if not values:
        return default
    text = values[-1]
    if (not (text.isascii() and text.isdigit()) or len(text) > len(str(high))
            or not low <= int(text) <= high):
        raise BadRequest(f"{name} must be an integer from {low} to {high}")
    return int(text)


class App:
    def __init__(self, store: StateStore, oplog: OperationsLog,
                 render_metrics: RenderMetrics, telemetry_path: str,
                 traces: Traces | None = None) -> None:
        self.store = store
        self.traces = traces
        self.oplog = oplog
        self.telemetry_path = telemetry_path
        self.render_metrics = render_metrics
        self._pages_lock = threading.Lock()
        self._pages: dict[tuple[int, int, int], bytes] = {}  # (log version, offset, limit)

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        params = parse_qs(environ.get("QUERY_STRING", ""))
        if path == self.telemetry_path:
            return self._metrics(environ, params, start_response)
        if path == "/-/healthy":
            return send(start_response, "200 OK", "text/plain", b"OK\n")
        if path == "/api/operations":
            try:
                body = self.operations_json(_int_param(params, "offset", 0, 0, OFFSET_MAXIMUM),
                                            _int_param(params, "limit", PAGE_DEFAULT, 1,
                                                       PAGE_MAXIMUM))
            except BadRequest as exc:
                body = json.dumps({"error": str(exc)}).encode()
                return send(start_response, "400 Bad Request", "application/json", body)
            return send(start_response, "200 OK", "application/json", body)
        if path == "/":
            return send(start_response, "200 OK", HTML, self.landing().encode())
        if (match := OPERATION_PATH.fullmatch(path)) and (judged := self._judged(match[1])):
            return send(start_response, "200 OK", HTML, operation_page.render(*judged).encode())
        if ((match := STATIC_PATH.fullmatch(path))
                and (found := operation_page.static_file(match[1]))):
            return send(start_response, "200 OK", found[1], found[0],
                        [operation_page.STATIC_CACHE])
        if (match := TRACE_PATH.fullmatch(path)) and self.traces is not None:
            if match[2] == "trace":
                body = self.traces.get(match[1])
            else:
                judged = self._judged(match[1])  # a trace there, a verdict on it
                body = (None if judged is None or judged[1] is None or judged[2] is None else
                        json.dumps({"id": match[1], **judged[2].to_json()}).encode())
            if body is not None:
                return send(start_response, "200 OK", "application/json", body)
        return send(start_response, "404 Not Found", "text/plain", b"not found\n")

    def _metrics(self, environ: dict, params: dict[str, list[str]],
                 start_response: StartResponse) -> Iterable[bytes]:
        """Content negotiation, `name[]` filters and gzip as prometheus_client's own
        exposition does them."""
        body, ctype = self.render_metrics(environ.get("HTTP_ACCEPT", ""), params.get("name[]", []))
        headers = [("Content-Type", ctype)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [body]

    def in_flight(self) -> list[dict[str, Any]]:
        """Operations in flight, as they stand now."""
        now = time.time()
        in_flight = []
        for item in self.store.view.in_flight:
            op = item.operation
            in_flight.append({
                "domain": op.domain, "snapshot": op.snapshot, "operation": op.operation,
                "kind": op.kind, "memory": op.memory, "depth": op.depth,
                "start": round(op.start, 3), "elapsed_seconds": round(now - op.start, 3),
                "start_source": op.start_source, "progress_estimate": item.progress_estimate,
                "memory_processed_bytes": op.memory_processed_bytes,
                "memory_remaining_bytes": op.memory_remaining_bytes,
                **item.context,
            })
        return in_flight

    def operations_json(self, offset: int, limit: int) -> bytes:
        """In flight (always all of them, a handful), then one page of the log, newest first;
        `next_offset` is where the next page starts (null after the last)."""
        in_flight = json.dumps(self.in_flight()).encode()
        return b'{"in_flight": ' + in_flight + b", " + self._page(offset, limit) + b"}"

    def _page(self, offset: int, limit: int) -> bytes:
        """The '"operations": [...], ...' part, rendered once per version of the log."""
        key = (self.oplog.version, offset, limit)
        with self._pages_lock:
            page = self._pages.get(key)
        if page is not None:
            return page
        entries, total = self.oplog.page(offset, limit)
        following = offset + len(entries)
        page = json.dumps({
            "operations": [{**e.to_json(), "id": e.id} for e in entries],
            "total": total, "offset": offset,
            "limit": limit,
            "next_offset": following if following < total else None,
        }).encode()[1:-1]
        with self._pages_lock:
            self._pages = {k: v for k, v in self._pages.items() if k[0] == key[0]}
            if len(self._pages) >= PAGE_CACHE_SIZE:
                del self._pages[next(iter(self._pages))]  # the oldest
            self._pages[key] = page
        return page

    def _judged(self, trace_id: str) -> tuple[FinishedOperation, Trace | None,
                                              Verdict | None] | None:
        """A logged operation, its trace (None when not kept) and its verdict (None without
        either a stored one or a trace); None when the operation has left the log."""
        entries, _ = self.oplog.page(0, self.oplog.size)
        entry = next((e for e in entries if e.id == trace_id), None)
        if entry is None:
            return None
        body = self.traces.get(trace_id) if self.traces is not None else None
        trace = from_json(json.loads(body)) if body is not None else None
        # The verdict the collector gave once the trace was complete; judged here only for an
        # operation logged before verdicts were (or whose trace was still being sampled).
        verdict = entry.verdict
        if verdict is None and trace is not None:
            verdict = judge(trace, entry, reference_rate(e for e in entries if e.id != trace_id))
        return entry, trace, verdict

    def landing(self) -> str:
        view = self.store.view
        finished, total = self.oplog.page(0, LANDING_ROWS)
        head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in STUDY_COLUMNS)
        rows = []
        for entry in self.in_flight():
            cells = [html.escape(_fmt(key, entry.get(key))) for _, key in STUDY_COLUMNS]
            cells[6] = f"running {entry['elapsed_seconds']:.1f} s"
            cells[10] = "in flight"
            rows.append("<tr class=running>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        for record in finished:
            entry = record.to_json()
            cells = [html.escape(_fmt(key, entry.get(key))) for _, key in STUDY_COLUMNS]
            cells[0] = f'<a href="/operations/{record.id}">{cells[0]}</a>'
            cells[-1] = operation_page.verdict_cell(entry)
            rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        shown = (f"the {len(finished)} newest of {total}; all of them in "
                 f'<a href="/api/operations">/api/operations</a>' if total > len(finished) else "")
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
<p>{shown}</p>
<table><tr>{head}</tr>
{''.join(rows) or '<tr><td colspan=21>no snapshot operation seen yet</td></tr>'}
</table></body></html>
"""



def send(start_response: StartResponse, status: str, ctype: str, body: bytes,
         headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    """One whole answer: every response of this server is built here."""
    start_response(status, [("Content-Type", ctype), *headers, ("Content-Length", str(len(body)))])
    return [body]


PLAIN = "text/plain; charset=utf-8"


class Methods:
    """GET and HEAD only, 405 with the methods allowed otherwise; HEAD gets the headers of
    GET without the body."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in METHODS:
            return send(start_response, "405 Method Not Allowed", PLAIN, b"Method Not Allowed\n",
                        [("Allow", ", ".join(METHODS))])
        body = self.app(environ, start_response)
        return [] if method == "HEAD" else body


class Safe:
    """The outermost layer: every answer names the server without its Python version, and an
    exception anywhere below answers 500 with one log line, never a traceback."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, [*headers, SERVER], exc_info)

        try:
            return self.app(environ, respond)
        except Exception as exc:  # noqa: BLE001 - a bug must not become a traceback per request
            log.error("%s %r: %s: %s", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                      type(exc).__name__, exc)
            body = send(lambda status, headers: respond(status, headers, sys.exc_info()),
                        "500 Internal Server Error", PLAIN, b"Internal Server Error\n")
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else body


class Guard:
    """Basic auth and the configured response headers in front of every path, as the
    exporter-toolkit does (health and the landing page included)."""

    def __init__(self, app: Callable, web: WebConfig) -> None:
        self.app = app
        self.auth = BasicAuth(web.users) if web.users else None
        self.headers = list(web.headers.items())

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        def respond(status: str, headers: list, exc_info: Any = None) -> Any:
            return start_response(status, headers + self.headers, exc_info)

        if self.auth is None or self.auth.allows(environ.get("HTTP_AUTHORIZATION")):
            return self.app(environ, respond)
        return send(respond, "401 Unauthorized", PLAIN, b"Unauthorized\n",
                    [("X-Content-Type-Options", "nosniff"), ("WWW-Authenticate", "Basic")])


class _Connection:
    """One client connection; `sock` becomes the TLS socket once wrapped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Connections:
    """Bounds what clients can hold: a request head (TLS handshake included) must arrive within
    HEAD_TIMEOUT, and at MAX_CONNECTIONS the oldest connection still sending its head is dropped
    for the new one, so slow or half-open clients cannot starve a scrape, nor grow threads and
    file descriptors without bound. wsgiref serves one request per connection."""

    def __init__(self, limit: int, head_timeout: float) -> None:
        self.limit = limit
        self.head_timeout = head_timeout
        self._lock = threading.Lock()
        self._open: set[_Connection] = set()
        self._heading: dict[_Connection, float] = {}  # still sending the head; oldest first

    def admit(self, conn: _Connection) -> bool:
        with self._lock:
            if len(self._open) >= self.limit:
                if not self._heading:
                    return False
                self._drop_locked(next(iter(self._heading)))
            self._open.add(conn)
            self._heading[conn] = time.monotonic()
            return True

    def head_read(self, conn: _Connection) -> None:
        with self._lock:
            self._heading.pop(conn, None)

    def closed(self, conn: _Connection) -> None:
        with self._lock:
            self._heading.pop(conn, None)
            self._open.discard(conn)

    def reap(self) -> None:
        """Drop connections whose head is late."""
        deadline = time.monotonic() - self.head_timeout
        with self._lock:
            for conn in [c for c, since in self._heading.items() if since < deadline]:
                self._drop_locked(conn)

    def _drop_locked(self, conn: _Connection) -> None:
        """Its thread sees end of file and ends; the slot is free now."""
        self._heading.pop(conn, None)
        self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


class _Handler(WSGIRequestHandler):
    server_version = "libvirt-snapshot-exporter"  # no Python version for scanners
    sys_version = ""

    def setup(self) -> None:
        self.conn: _Connection = self.request
        self.request = self.conn.sock
        super().setup()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers too
        self.server.connections.head_read(self.conn)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> io.TextIOBase:
        """Where wsgiref writes the traceback of a response it could not send (a client that
        stopped reading until the write timed out): the debug log, not stderr."""
        return _DebugStream()


class _DebugStream(io.TextIOBase):
    """A text stream into the debug log."""

    def write(self, text: str) -> int:
        if text.strip():
            log.debug("%s", text.rstrip())
        return len(text)


def _plain_http(sock: socket.socket) -> bool:
    """A TLS record starts with 0x16; an HTTP request with a method's capital letter."""
    first = sock.recv(1, socket.MSG_PEEK)
    return first.isalpha() and first.isupper()


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.connections = Connections(MAX_CONNECTIONS, HEAD_TIMEOUT)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # "::" takes IPv4 too, as Go's net does
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                                   0 if self.server_address[0] == "::" else 1)
        super().server_bind()

    @property
    def address_text(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        conn = _Connection(request)
        if not self.connections.admit(conn):
            log.debug("%s: refused, %d connections busy", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(conn, client_address)

    def finish_request(self, conn: _Connection, client_address: Any) -> None:
        conn.sock.settimeout(IO_TIMEOUT)
        if self.tls is not None:
            if _plain_http(conn.sock):  # answer as Go's net/http does
                conn.sock.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"
                                  b"Client sent an HTTP request to an HTTPS server.\n")
                return
            conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                             do_handshake_on_connect=False)
            conn.sock.do_handshake()
        self.RequestHandlerClass(conn, client_address, self)

    def shutdown_request(self, request: _Connection | socket.socket) -> None:
        if isinstance(request, _Connection):
            self.connections.closed(request)
            request = request.sock
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish, time out or speak garbage are their problem: no traceback."""
        log.debug("%s: %s", client_address, sys.exc_info()[1])

    def service_actions(self) -> None:
        self.connections.reap()


NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def _bind(host: str, port: int, tls: ssl.SSLContext | None) -> ThreadingWSGIServer:
    """host '' is every address: one IPv6 socket that takes IPv4 too, or IPv4 alone on a
    machine without IPv6."""
    if host:
        return ThreadingWSGIServer((host, port), tls)
    try:
        return ThreadingWSGIServer(("::", port), tls)
    except OSError as exc:
        if exc.errno not in NO_IPV6:
            raise
        log.info("no IPv6 (%s): listening on IPv4 only", exc.strerror)
        return ThreadingWSGIServer(("0.0.0.0", port), tls)


def serve(app: Callable, host: str, port: int, web: WebConfig | None = None) -> ThreadingWSGIServer:
    """Bind now (so a bad address fails at startup); the caller runs serve_forever()."""
    if web is not None and (web.users or web.headers):
        app = Guard(app, web)
    server = _bind(host, port, web.tls if web else None)
    server.set_app(Safe(Methods(app)))  # Methods outside Guard: a HEAD answered 401 has no body
    return server
