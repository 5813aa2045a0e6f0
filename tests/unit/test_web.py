"""The WSGI layers in front of the routes, the bounds on connections, binding every address
without IPv6, and the runbook the exporter serves."""

from __future__ import annotations

import errno
import io
import logging
import re
import socket
import socketserver

import bcrypt
import pytest
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.web import layers as wsgi_layers
from libvirt_snapshot_exporter.web import routes
from libvirt_snapshot_exporter.web import server as http_server
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
        bounds = http_server.Connections(limit=2, head_timeout=5.0)
        assert bounds.admit(conns[0]) and bounds.admit(conns[1])
        bounds.head_read(conns[1])  # being answered: never dropped for room
        assert bounds.admit(conns[2])  # conns[0] made room
        assert pairs[0][1].recv(1) == b""  # its client sees the end
        bounds.head_read(conns[2])
        assert not bounds.admit(conns[3])  # all being answered: refused
        bounds.closed(conns[1])
        assert bounds.admit(conns[3])
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_connections_whose_head_is_late_are_dropped():
    ours, theirs = socket.socketpair()
    try:
        bounds = http_server.Connections(limit=8, head_timeout=0.0)
        bounds.admit(http_server.Connection(ours))
        bounds.reap()
        assert theirs.recv(1) == b""
    finally:
        ours.close()
        theirs.close()


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
