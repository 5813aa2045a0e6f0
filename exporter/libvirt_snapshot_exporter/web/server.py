"""The HTTP server: wsgiref's threading server, hardened. Optional TLS from the web config
file, and bounds on what slow, silent, greedy or garbage-speaking clients can hold: a deadline
for the request head, one for every read, a minimum pace and a deadline for every answer, a cap
on open connections, and, for the scrapes (the lane: the telemetry path and /-/healthy), slots
no other path can take and most of the interpreter's time: other requests are answered one at
a time, within a share of it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .layers import Guard, Methods, Safe
from .webconfig import WebConfig

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 5.0  # seconds a client has to send its request head, TLS handshake included
IO_TIMEOUT = 30.0  # seconds any single read may stall
MAX_CONNECTIONS = 128  # a scraper needs one at a time; each costs a thread while open
LANE_SLOTS = 8  # of them, kept for the lane: other paths answer 503 when they would take these
WRITE_CHUNK = 64 * 1024  # an answer is sent in chunks of this size...
WRITE_STALL = 5.0  # ...each of which the client must take within this many seconds
ANSWER_SECONDS = 60.0  # and the whole answer within this many: 15 MB at 250 KB/s
WORKERS = 1  # requests outside the lane computing their answer at once (Share)...
OTHERS_SHARE = 0.3  # ...within this share of the interpreter's time
SWITCH_INTERVAL = 0.0005  # seconds a thread may hold the interpreter while others wait for it


class Connection:
    """One client connection; `sock` becomes the TLS socket once wrapped."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Connections:
    """Bounds what clients can hold: a request head (TLS handshake included) must arrive within
    HEAD_TIMEOUT, and at MAX_CONNECTIONS the oldest connection still sending its head is dropped
    for the new one, so slow or half-open clients cannot starve a scrape, nor grow threads and
    file descriptors without bound. Requests outside the lane may hold all but `reserved` of
    the connections: past that they are refused once their head is read, so a scrape always
    finds a slot, whatever the other clients ask for and however slowly they read.
    wsgiref serves one request per connection."""

    def __init__(self, limit: int, head_timeout: float, reserved: int) -> None:
        self.limit = limit
        self.head_timeout = head_timeout
        self.reserved = reserved
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._heading: dict[Connection, float] = {}  # still sending the head; oldest first
        self._others: set[Connection] = set()  # answering a request outside the lane

    def admit(self, conn: Connection) -> bool:
        with self._lock:
            if len(self._open) >= self.limit:
                if not self._heading:
                    return False
                self._drop_locked(next(iter(self._heading)))
            self._open.add(conn)
            self._heading[conn] = time.monotonic()
            return True

    def head_read(self, conn: Connection, lane: bool) -> bool:
        """Whether the request may be answered: always in the lane; outside it while the
        others answered hold fewer than all but the reserved slots."""
        with self._lock:
            self._heading.pop(conn, None)
            if lane:
                return True
            if len(self._others) >= self.limit - self.reserved:
                return False
            self._others.add(conn)
            return True

    def closed(self, conn: Connection) -> None:
        with self._lock:
            self._heading.pop(conn, None)
            self._others.discard(conn)
            self._open.discard(conn)

    def reap(self) -> None:
        """Drop connections whose head is late."""
        deadline = time.monotonic() - self.head_timeout
        with self._lock:
            for conn in [c for c, since in self._heading.items() if since < deadline]:
                self._drop_locked(conn)

    def _drop_locked(self, conn: Connection) -> None:
        """Its thread sees end of file and ends; the slot is free now."""
        self._heading.pop(conn, None)
        self._others.discard(conn)
        self._open.discard(conn)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)


class _Handler(WSGIRequestHandler):
    server_version = "libvirt-snapshot-exporter"  # no Python version for scanners
    sys_version = ""

    def setup(self) -> None:
        self.cpu_start = time.thread_time()
        self.other = False  # outside the lane: charged to the Share
        self.conn: Connection = self.request
        self.request = self.conn.sock
        super().setup()
        self.wfile = PacedWriter(self.conn.sock, WRITE_STALL, ANSWER_SECONDS)

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the headers too
        lane = not parsed or urlsplit(self.path).path in self.server.lane
        if not self.server.connections.head_read(self.conn, lane):
            log.debug("%s: refused, the other clients hold their share of the connections",
                      self.address_string())
            self.send_error(503, "Busy: try again later")
            return False
        if not lane:  # a worker of the Share, until its answer starts going out
            self.server.others.enter()
            self.other = True
            self.wfile.holding = self._leave
        return parsed

    def _leave(self) -> None:
        self.server.others.leave(time.thread_time() - self.cpu_start)
        self.cpu_start = time.thread_time()  # what follows is charged by finish()

    def finish(self) -> None:
        self.wfile.let_go()
        super().finish()
        if self.other:
            self.server.others.charge(time.thread_time() - self.cpu_start)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):  # formatted for every request otherwise
            log.debug("%s %s", self.address_string(), format % args)

    def get_stderr(self) -> io.TextIOBase:
        """Where wsgiref writes the traceback of a response it could not send (a client that
        stopped reading until the write timed out): the debug log, not stderr."""
        return _DebugStream()


class PacedWriter(io.BufferedIOBase):
    """Where an answer is written: in chunks, each of which the client must take within
    `stall` seconds, the whole answer within `seconds` (from its first byte), so a client that
    does not read, or reads too slowly, loses its connection instead of keeping a slot (and the
    thread and memory that go with it) for as long as it likes. A worker it holds (`holding`:
    what lets it go) is let go as the answer starts going out, so a slow reader holds none."""

    def __init__(self, sock: socket.socket, stall: float, seconds: float) -> None:
        self.sock = sock
        self.stall = stall
        self.seconds = seconds
        self.deadline: float | None = None
        self.holding: Callable[[], None] | None = None

    def let_go(self) -> None:
        release, self.holding = self.holding, None
        if release is not None:
            release()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.deadline is None:
            self.deadline = time.monotonic() + self.seconds
            self.let_go()
        for start in range(0, len(view), WRITE_CHUNK):
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"answer not taken within {self.seconds:g} s")
            self.sock.settimeout(min(self.stall, left))
            self.sock.sendall(view[start:start + WRITE_CHUNK])
        return len(view)


class Share:
    """The requests outside the lane: `workers` of them compute their answers at once, and
    each one's CPU time (its thread's, from its start to its end) is charged as a pause the
    next one waits out, so that together they take at most `share` of the interpreter's time:
    however many clients hammer the pages and the API, the rest is left to the scrapes and the
    collection. Clients past the workers wait, holding their connection only."""

    def __init__(self, workers: int, share: float) -> None:
        self.share = share
        self._workers = threading.Semaphore(workers)
        self._lock = threading.Lock()
        self._not_before = 0.0

    def enter(self) -> None:
        self._workers.acquire()
        with self._lock:
            wait = self._not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def leave(self, cpu_seconds: float) -> None:
        self.charge(cpu_seconds)
        self._workers.release()

    def charge(self, cpu_seconds: float) -> None:
        with self._lock:
            self._not_before = (max(self._not_before, time.monotonic())
                                + cpu_seconds * (1 / self.share - 1))


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

    def __init__(self, address: tuple[str, int], tls: ssl.SSLContext | None = None,
                 lane: Collection[str] = ("/metrics", "/-/healthy")) -> None:
        self.tls = tls
        self.lane = frozenset(lane)  # the paths that keep LANE_SLOTS for themselves
        self.others = Share(WORKERS, OTHERS_SHARE)
        self.connections = Connections(MAX_CONNECTIONS, HEAD_TIMEOUT, LANE_SLOTS)
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
        conn = Connection(request)
        if not self.connections.admit(conn):
            log.debug("%s: refused, %d connections busy", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(conn, client_address)

    def finish_request(self, conn: Connection, client_address: Any) -> None:
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

    def shutdown_request(self, request: Connection | socket.socket) -> None:
        if isinstance(request, Connection):
            self.connections.closed(request)
            request = request.sock
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish, time out or speak garbage are their problem: no traceback."""
        log.debug("%s: %s", client_address, sys.exc_info()[1])

    def service_actions(self) -> None:
        self.connections.reap()


NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


def bind(host: str, port: int, tls: ssl.SSLContext | None,
         lane: Collection[str] = ("/metrics", "/-/healthy")) -> ThreadingWSGIServer:
    """host '' is every address: one IPv6 socket that takes IPv4 too, or IPv4 alone on a
    machine without IPv6."""
    if host:
        return ThreadingWSGIServer((host, port), tls, lane)
    try:
        return ThreadingWSGIServer(("::", port), tls, lane)
    except OSError as exc:
        if exc.errno not in NO_IPV6:
            raise
        log.info("no IPv6 (%s): listening on IPv4 only", exc.strerror)
        return ThreadingWSGIServer(("0.0.0.0", port), tls, lane)


def serve(app: Callable, host: str, port: int, web: WebConfig | None = None) -> ThreadingWSGIServer:
    """Bind now (so a bad address fails at startup); the caller runs serve_forever(). The lane
    is the app's telemetry path (routes.App's) and /-/healthy."""
    lane = (getattr(app, "telemetry_path", "/metrics"), "/-/healthy")
    if web is not None and (web.users or web.headers):
        app = Guard(app, web)
    server = bind(host, port, web.tls if web else None, lane)
    server.set_app(Safe(Methods(app)))  # Methods outside Guard: a HEAD answered 401 has no body
    # Other clients' threads keep the interpreter busy: a scrape's thread then waits for it up
    # to this long (not the default 5 ms) each time it asks, which it does a dozen times.
    sys.setswitchinterval(SWITCH_INTERVAL)
    # What was built before serving (the log read back: 100,000 entries are millions of
    # objects) lives as long as the process: out of the collector's full passes, which would
    # otherwise walk it all (0.4-0.9 s with 100,000 entries) while every request waits.
    gc.freeze()
    return server
