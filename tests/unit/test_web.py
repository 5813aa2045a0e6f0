"""The WSGI layers in front of the routes, the bounds on connections (the lane kept for the
scrapes, the pace and deadline of answers, with real sockets on loopback), binding every
address without IPv6, and the runbook the exporter serves."""

from __future__ import annotations

import contextlib
import errno
import gc
import io
import logging
import re
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator

import bcrypt
import pytest
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.web import layers as wsgi_layers
from libvirt_snapshot_exporter.web import routes
from libvirt_snapshot_exporter.web import server as http_server
from libvirt_snapshot_exporter.web.page_cache import PageCache
from libvirt_snapshot_exporter.web.webconfig import WebConfig
from lse_devtools.bundle import PROM, load_yaml


class Recorder:
    def __init__(self) -> None:
        self.status = ""
        self.headers: list[tuple[str, str]] = []

    def __call__(self, status: str, headers: list, exc_info: object = None) -> None:
        self.status, self.headers = status, headers


def environ(method: str = "GET", path: str = "/") -> dict:
    return {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO()}


def failing_app(_environ: dict, start_response) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    raise KeyError("a bug")


def test_an_exception_is_a_500_and_one_log_line_without_traceback(caplog):
    recorder = Recorder()
    body = wsgi_layers.Safe(failing_app)(environ(path="/x\n"), recorder)
    assert recorder.status.startswith("500") and body == [b"Internal Server Error\n"]
    assert wsgi_layers.SERVER in recorder.headers
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is None and "\n" not in record.getMessage()
    assert "KeyError" in record.getMessage() and "'/x\\n'" in record.getMessage()


def test_head_keeps_headers_and_drops_the_body():
    def app(_environ: dict, start_response) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hello"]

    recorder = Recorder()
    assert wsgi_layers.Methods(app)(environ("HEAD"), recorder) == []
    assert recorder.headers == [("Content-Length", "5")]
    assert wsgi_layers.Methods(app)(environ("GET"), recorder) == [b"hello"]


@pytest.mark.parametrize("method", ["POST", "PATCH", "get", "", "CONNECT"])
def test_other_methods_are_405(method):
    recorder = Recorder()
    wsgi_layers.Methods(failing_app)(environ(method), recorder)
    assert recorder.status.startswith("405") and ("Allow", "GET, HEAD") in recorder.headers


def test_every_address_falls_back_to_ipv4_where_there_is_no_ipv6(monkeypatch, caplog):
    real = socket.socket

    class NoIPv6(real):
        def __init__(self, family: int = -1, *args: object, **kwargs: object) -> None:
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socketserver.socket, "socket", NoIPv6)
    caplog.set_level(logging.INFO)
    server = http_server.bind("", 0, None)
    try:
        assert server.address_family == socket.AF_INET
        assert server.address_text.startswith("0.0.0.0:")
    finally:
        server.server_close()
    assert any("no IPv6" in r.getMessage() for r in caplog.records)


def test_every_address_is_one_dual_stack_socket():
    try:
        server = http_server.bind("", 0, None)
    except OSError:
        pytest.skip("no IPv6 here")
    try:
        assert server.address_family == socket.AF_INET6
        assert server.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert server.address_text.startswith("[::]:")
    finally:
        server.server_close()


def test_head_answers_carry_no_body_whichever_layer_answers():
    """As serve() stacks them: a HEAD refused by basic auth, or failing below, has no body."""
    users = {"alice": bcrypt.hashpw(b"secret", bcrypt.gensalt(4))}
    server = http_server.serve(failing_app, "127.0.0.1", 0, WebConfig(users=users))
    try:
        recorder = Recorder()
        assert server.get_app()(environ("HEAD"), recorder) == []
        assert recorder.status.startswith("401")
        assert wsgi_layers.Safe(failing_app)(environ("HEAD"), recorder) == []
        assert recorder.status.startswith("500")
    finally:
        server.server_close()


def test_connections_make_room_by_dropping_the_oldest_still_sending_its_head():
    pairs = [socket.socketpair() for _ in range(4)]
    try:
        conns = [http_server.Connection(ours) for ours, _ in pairs]
        bounds = http_server.Connections(limit=2, head_timeout=5.0, reserved=0)
        assert bounds.admit(conns[0]) and bounds.admit(conns[1])
        assert bounds.head_read(conns[1], lane=False)  # being answered: never dropped for room
        assert bounds.admit(conns[2])  # conns[0] made room
        assert pairs[0][1].recv(1) == b""  # its client sees the end
        assert bounds.head_read(conns[2], lane=False)
        assert not bounds.admit(conns[3])  # all being answered: refused
        bounds.closed(conns[1])
        assert bounds.admit(conns[3])
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_requests_outside_the_lane_leave_its_slots_free():
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        conns = [http_server.Connection(ours) for ours, _ in pairs]
        bounds = http_server.Connections(limit=4, head_timeout=5.0, reserved=2)
        assert all(bounds.admit(c) for c in conns[:4])
        assert bounds.head_read(conns[0], lane=False) and bounds.head_read(conns[1], lane=False)
        assert not bounds.head_read(conns[2], lane=False)  # would take a slot of the lane
        assert bounds.head_read(conns[3], lane=True)
        bounds.closed(conns[2])
        assert bounds.admit(conns[4]) and bounds.head_read(conns[4], lane=True)
        bounds.closed(conns[0])
        assert bounds.head_read(conns[2], lane=False)  # a slot outside the lane came free
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_connections_whose_head_is_late_are_dropped():
    ours, theirs = socket.socketpair()
    try:
        bounds = http_server.Connections(limit=8, head_timeout=0.0, reserved=2)
        bounds.admit(http_server.Connection(ours))
        bounds.reap()
        assert theirs.recv(1) == b""
    finally:
        ours.close()
        theirs.close()


BIG = b"x" * (8 * 2**20)


def big_app(environ: dict, start_response) -> list[bytes]:
    """An 8 MB answer outside the lane, a small one in it (the telemetry path)."""
    body = b"up 1\n" if environ["PATH_INFO"] == "/metrics" else BIG
    return wsgi_layers.send(start_response, "200 OK", "text/plain", body)


@contextlib.contextmanager
def serving(app) -> Iterator[http_server.ThreadingWSGIServer]:
    server = http_server.serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def never_reading(port: int, path: str = "/big") -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def test_a_scrape_finds_a_slot_while_every_other_is_held_by_clients_that_never_read(monkeypatch):
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 6)
    monkeypatch.setattr(http_server, "LANE_SLOTS", 2)
    with serving(big_app) as server:
        port = server.server_address[1]
        greedy = [never_reading(port) for _ in range(10)]
        try:
            time.sleep(0.5)  # all heads read: 4 being answered, the rest refused
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                assert answer.status == 200 and answer.read() == b"up 1\n"
            answers = []
            for sock in greedy:
                sock.settimeout(5)
                answers.append(sock.recv(12))
            # 4 answered, the others refused: a 503 once their head is read, or closed
            assert answers.count(b"HTTP/1.0 200") == 4
            assert set(answers) <= {b"HTTP/1.0 200", b"HTTP/1.0 503", b""}
        finally:
            for sock in greedy:
                sock.close()


def test_a_client_that_does_not_read_its_answer_loses_its_connection(monkeypatch):
    monkeypatch.setattr(http_server, "WRITE_STALL", 0.5)
    with serving(big_app) as server:
        sock = never_reading(server.server_address[1])
        try:
            time.sleep(3)  # the answer stalled long enough for the server to give up
            sock.settimeout(10)
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(2**20):
                    received += len(chunk)
            assert 0 < received < len(BIG)  # cut, with room: the kernel's buffers held some
        finally:
            sock.close()


def test_an_answer_must_be_taken_within_its_deadline_whatever_its_pace():
    ours, theirs = socket.socketpair()
    try:
        writer = http_server.PacedWriter(ours, stall=5.0, seconds=0.0)
        with pytest.raises(TimeoutError):
            writer.write(b"x" * 10)
        writer = http_server.PacedWriter(ours, stall=0.2, seconds=60.0)
        with pytest.raises(TimeoutError):
            writer.write(BIG)  # nobody reads theirs
    finally:
        ours.close()
        theirs.close()


def test_outside_the_lane_one_answer_at_a_time_within_its_share_and_scrapes_at_once(
        monkeypatch):
    monkeypatch.setattr(http_server, "OTHERS_SHARE", 0.5)
    release = threading.Event()
    answered: dict[str, float] = {}

    def app(environ: dict, start_response) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/held":
            release.wait(10)
        elif path == "/busy":
            spin = time.thread_time() + 0.3  # 0.3 s of CPU: the next waits as long after it
            while time.thread_time() < spin:
                pass
        return wsgi_layers.send(start_response, "200 OK", "text/plain", path.encode())

    def get(path: str) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=20) as answer:
            assert answer.read() == path.encode()
        answered[path] = time.monotonic()

    with serving(app) as server:
        port = server.server_address[1]
        held = threading.Thread(target=get, args=("/held",))
        held.start()
        time.sleep(0.3)  # /held has the worker
        waiting = threading.Thread(target=get, args=("/other",))
        waiting.start()
        get("/metrics")  # at once, the worker held or not
        time.sleep(0.3)
        assert set(answered) == {"/metrics"}  # /other waits for the worker
        release.set()
        held.join()
        waiting.join()
        busy = threading.Thread(target=get, args=("/busy",))
        busy.start()
        time.sleep(0.1)
        get("/after")
        busy.join()
    # /busy spent 0.3 s of CPU: it kept the worker about as long again after its answer
    assert answered["/after"] - answered["/busy"] >= 0.2


def test_a_worker_is_let_go_as_its_answer_starts_going_out():
    ours, theirs = socket.socketpair()
    let_go = []
    try:
        writer = http_server.PacedWriter(ours, stall=0.2, seconds=60.0)
        writer.holding = lambda: let_go.append(1)
        with pytest.raises(TimeoutError):
            writer.write(BIG)  # nobody reads: the worker went before the first byte
        assert let_go == [1]
        writer.let_go()
        assert let_go == [1]
    finally:
        ours.close()
        theirs.close()


def test_the_share_makes_the_next_request_wait_out_the_last_one_s_cpu_time():
    share = http_server.Share(workers=1, share=0.25)
    share.enter()
    share.leave(0.1)  # 0.1 s of CPU at a quarter: 0.3 s of pause for the next
    started = time.monotonic()
    share.enter()
    assert time.monotonic() - started >= 0.25
    share.leave(0.0)


def test_the_runbook_is_served_with_a_section_for_every_alert(tmp_path):
    """Alerts link /runbook#<alert in lower case>: every alert of the shipped rules has its
    section there, from the runbook inside the installed package."""
    app = routes.App(StateStore(View.initial("test:///default")),
                     OperationsLog(str(tmp_path), 10), lambda *_: (b"", "text/plain"), "/metrics")
    recorder = Recorder()
    page = b"".join(app(environ(path="/runbook"), recorder)).decode()
    assert recorder.status == "200 OK"
    assert ("Content-Type", "text/html; charset=utf-8") in recorder.headers
    alerts = [rule["alert"] for group in load_yaml(PROM / "rules" / "alerts.yml")["groups"]
              for rule in group["rules"] if "alert" in rule]
    assert alerts
    for alert in alerts:
        assert f'id="{alert.lower()}"' in page, f"{alert} has no section in the runbook"
    # links to the repository's files would 404 here: they are named, not linked
    assert {link for link in re.findall(r'href="(?!https?:)([^"#]+)', page)} <= {"./"}


def test_a_page_is_made_once_for_clients_asking_at_once_and_the_cache_is_bounded_in_count_and_bytes():
    cache: PageCache[bytes] = PageCache(size=3)
    made = []
    gate = threading.Event()

    def make() -> bytes:
        made.append(1)
        gate.wait(5)
        return b"page"

    threads = [threading.Thread(target=cache.get, args=("k", 1, make)) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join()
    assert made == [1] and cache.get("k", 1, make) == b"page" and made == [1]
    assert cache.get("k", 2, lambda: b"new") == b"new"  # made from something else: made again
    for n in range(10):
        cache.get(n, 1, lambda: b"x")
    assert len(cache._values) == 3 and not cache._making
    weighed: PageCache[bytes] = PageCache(size=100, budget=10, weigh=len)
    for n in range(6):
        weighed.get(n, 1, lambda: b"abcd")
    assert len(weighed._values) == 2 and weighed.weight == 8  # 10 bytes hold two of them
    assert weighed.get("big", 1, lambda: b"x" * 50) and list(weighed._values) == ["big"]


def test_what_was_built_before_serving_is_out_of_the_collector_s_full_passes():
    """The log read back (100,000 entries: millions of objects) would be walked by every full
    collection, pausing every request for most of a second."""
    gc.unfreeze()
    try:
        server = http_server.serve(failing_app, "127.0.0.1", 0)
        server.server_close()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
