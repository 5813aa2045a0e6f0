"""Production hardening (issue 7), on the real libvirtd with real guests and the real exporter:
libvirtd restarted mid-snapshot, SIGTERM mid-snapshot, a state directory that cannot be
written, hostile HTTP clients, TLS and basic auth side by side with Debian's node_exporter
given the same web config file, and the systemd unit."""

from __future__ import annotations

import base64
import http.client
import os
import random
import re
import select
import selectors
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import psutil
import pytest
from libvirt_snapshot_exporter.web import server as http_server
from lse_devtools import testbed
from lse_devtools.driving import Timed, in_flight, operations, wait_operations
from lse_devtools.exporter_proc import ExporterProcess, free_port, logged_entries

pytestmark = pytest.mark.libvirt

ROOT = Path(__file__).resolve().parents[2]
NODE_EXPORTER = "prometheus-node-exporter"


def _series_gone(exporter: ExporterProcess, domain: str) -> bool:
    return exporter.value("libvirt_snapshot_operation_in_progress", domain=domain) is None


# --- libvirtd restarted, exporter stopped, during a snapshot -------------------------------------


def test_libvirtd_restarted_during_a_snapshot(libvirtd):
    """Found on libvirt 9.0: on SIGTERM libvirtd drops its clients at once (the caller gets
    'End of file') but finishes the running snapshot job before it exits, so the snapshot
    exists afterwards. The exporter must then record that one create as a success, ended by its
    metadata file (the watch reads libvirt's directory, not libvirtd, so it sees the file written
    as the job finishes during the outage), and keep nothing in flight."""
    conn = libvirtd.get()
    guest = testbed.create_guest(conn, "restart", memory_mib=768, fill_mib=512)
    exporter = ExporterProcess()
    try:
        exporter.start()
        guest.wait_ready()
        dom = conn.lookupByName(guest.name)
        call = Timed(lambda: dom.snapshotCreateXML(
            "<domainsnapshot><name>across</name></domainsnapshot>"))
        exporter.wait_for(lambda: in_flight(exporter, guest.name), 10, "create in flight",
                          interval=0.05)
        down_at = time.time()
        testbed.stop_libvirtd()
        testbed.start_libvirtd()
        call.join()
        assert call.error is not None, "the client kept its connection through the restart"
        exporter.wait_for(lambda: exporter.value("libvirt_up") == 1.0, 60, "libvirt_up 1")
        up_at = time.time()
        dom = libvirtd.get().lookupByName(guest.name)
        assert dom.snapshotCurrent().getName() == "across"  # libvirt finished the job
        (op,) = wait_operations(exporter, guest.name, 1)
        assert (op["operation"], op["snapshot"], op["outcome"]) == ("create", "across", "success")
        assert op["start"] <= down_at and op["end_source"] == "metadata", op
        assert op["end"] <= up_at and op["uncertainty_seconds"] <= up_at - down_at + 1, op
        exporter.wait_for(lambda: _series_gone(exporter, guest.name), 10, "no in-progress series")
        assert in_flight(exporter, guest.name) == []
        assert exporter.value("libvirt_snapshot_domain_operation_duration_seconds_count",
                              domain=guest.name, operation="create", outcome="success") == 1
        assert exporter.value("libvirt_snapshot_exporter_reconnects_total") >= 2
    finally:
        exporter.stop()
        testbed.destroy_guest(libvirtd.get(), guest)


def test_sigterm_during_a_snapshot_exits_0_promptly_and_keeps_history(libvirtd):
    """A guest with 1 GiB of random data: its internal snapshot lasts seconds, longer than the
    exporter takes to exit."""
    conn = libvirtd.get()
    guest = testbed.create_guest(conn, "sigterm", memory_mib=1280, fill_mib=1024)
    exporter = ExporterProcess()
    state = Path(exporter.state_dir) / "operations.jsonl"
    try:
        exporter.start()
        guest.wait_ready(timeout=300)
        testbed.create_snapshot(conn, guest, "kept")
        (kept,) = wait_operations(exporter, guest.name, 1)
        call = Timed(lambda: testbed.create_snapshot(conn, guest, "during"))
        exporter.wait_for(lambda: in_flight(exporter, guest.name, "during"), 10,
                          "create in flight", interval=0.05)
        signalled = time.monotonic()
        code = exporter.stop(signal.SIGTERM)
        took = time.monotonic() - signalled
        still_running = call.thread.is_alive()
        assert code == 0 and took < 5, (code, took)
        assert still_running, "the snapshot ended before the exporter did: not a test of SIGTERM"
        assert "signal 15: shutting down" in exporter.log()
        logged = logged_entries(state)
        assert [(e["snapshot"], e["start"]) for e in logged
                if e["domain"] == guest.name] == [("kept", kept["start"])]

        ended_before_restart = not call.thread.is_alive()
        exporter = ExporterProcess(state_dir=exporter.state_dir).start()
        running_after_restart = call.thread.is_alive()
        call.join()
        assert call.error is None
        ops = operations(exporter, guest.name)
        assert ops[0]["snapshot"] == "kept" and ops[0]["start"] == kept["start"]
        if running_after_restart:  # picked up in flight, timed when it ends
            ops = wait_operations(exporter, guest.name, 2)
        if ended_before_restart:  # began and ended while no exporter ran: nothing could see it
            assert len(ops) == 1
        # Ended while the new exporter started: seen or not, depending on its first poll.
        for op in ops[1:]:
            assert (op["snapshot"], op["outcome"]) == ("during", "success")
            assert op["start"] >= call.start - 0.5 and op["end"] <= call.end + 0.5, (op, call.end)
        exporter.wait_for(lambda: _series_gone(exporter, guest.name), 10, "no in-progress series")
    finally:
        exporter.stop()
        testbed.destroy_guest(libvirtd.get(), guest)


# --- the state directory cannot be written -------------------------------------------------------


def _mount_tmpfs(options: str) -> Path:
    mount = Path(tempfile.mkdtemp(prefix="lse-statefs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    return mount


# host_only: the exporter's own writes to its state directory, whatever libvirt it watches.
@pytest.mark.host_only
@pytest.mark.parametrize("how", ["file", "read-only", "full"])
def test_state_directory_not_writable(libvirtd, bare, how):
    """Operations go on being counted and served; the failure is a log line and two metrics;
    once the directory is writable again the whole history (in memory meanwhile) is written."""
    conn = libvirtd.get()
    mount: Path | None = None
    if how == "file":
        state = Path(tempfile.mkdtemp(prefix="lse-state-")) / "state"
        state.write_text("a file where the state directory should be\n")
        error = "File exists"
    elif how == "read-only":
        mount = _mount_tmpfs("size=1m,ro")
        state, error = mount, "Read-only file system"
    else:
        mount = _mount_tmpfs("size=256k")
        with open(mount / "ballast", "wb", buffering=0) as handle:
            for _ in range(1024):
                try:
                    handle.write(b"\0" * 4096)
                except OSError:
                    break
        assert os.statvfs(mount).f_bavail == 0
        state, error = mount, "No space left on device"
    exporter = ExporterProcess(state_dir=str(state))
    try:
        exporter.start()
        assert exporter.value("libvirt_snapshot_exporter_state_write_success") == 1
        since = time.time()
        testbed.create_snapshot(conn, bare, "unsaved")
        (op,) = wait_operations(exporter, bare.name, 1, since)
        assert op["snapshot"] == "unsaved"
        exporter.wait_for(lambda: exporter.value(
            "libvirt_snapshot_exporter_state_write_success") == 0, 10, "state_write_success 0")
        assert exporter.value("libvirt_snapshot_exporter_state_write_errors_total") >= 1
        assert exporter.value("libvirt_snapshot_domain_operation_duration_seconds_count",
                              domain=bare.name, operation="create", outcome="success") == 1
        lines = [line for line in exporter.log().splitlines()
                 if "cannot write operations log" in line]
        assert len(lines) == 1 and str(state) in lines[0] and error in lines[0], lines
        assert exporter.get("/-/healthy") == "OK\n"

        if how == "file":
            state.unlink()
        elif how == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        else:
            (mount / "ballast").unlink()
        testbed.create_snapshot(conn, bare, "saved")
        wait_operations(exporter, bare.name, 2, since)
        exporter.wait_for(lambda: exporter.value(
            "libvirt_snapshot_exporter_state_write_success") == 1, 10, "state_write_success 1")
        logged = [e["snapshot"] for e in logged_entries(state / "operations.jsonl")]
        assert logged == ["unsaved", "saved"]
        assert "writable again" in exporter.log()
    finally:
        exporter.stop()
        testbed.delete_all_snapshots(conn, bare)
        if mount is not None:
            subprocess.run(["umount", str(mount)], check=False)
            mount.rmdir()


# --- hostile HTTP clients ------------------------------------------------------------------------


def _exchange(port: int, payload: bytes, timeout: float = 8.0) -> bytes:
    """Send payload, then read until the server closes; what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server may close before reading all of it
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer


BAD_REQUESTS = [
    lambda: os.urandom(random.randint(1, 4096)),
    lambda: b"\0" * 100,
    lambda: b"\x16\x03\x01\x02\x00\x01" + os.urandom(500),  # a TLS hello to plain HTTP
    lambda: b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n",
    lambda: b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n",
    lambda: b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200))
    + b"\r\n",
    lambda: b"GET /metrics HTTP/9.9\r\n\r\n",
    lambda: b"BREW /pot HTCPCP/1.0\r\n\r\n",
]


class Probe(threading.Thread):
    """Scrapes /metrics every 0.2 s (at most `count` times) and keeps each latency."""

    def __init__(self, exporter: ExporterProcess, count: int) -> None:
        super().__init__(daemon=True)
        self.exporter, self.count = exporter, count
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        for _ in range(self.count):
            if self.done.is_set():
                return
            start = time.monotonic()
            try:
                if "libvirt_up 1.0" not in self.exporter.get("/metrics", timeout=5):
                    self.failures.append("no libvirt_up 1")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.latencies.append(time.monotonic() - start)
            time.sleep(0.2)


def _slow_client(port: int, until: float, drops: list[float], answers: list[bytes]) -> None:
    """Sends a request head one byte a second, reconnecting whenever the server drops it."""
    head = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slowloris\r\n\r\n"
    while time.monotonic() < until:
        opened = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            for byte in head:
                if time.monotonic() >= until:
                    return
                readable, _, _ = select.select([sock], [], [], 1.0)
                if readable:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if data:
                        answers.append(data)
                    drops.append(time.monotonic() - opened)
                    break
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    drops.append(time.monotonic() - opened)
                    break
        time.sleep(random.uniform(0.2, 1.0))


def _half_open(port: int, count: int) -> dict[socket.socket, float]:
    """Connections that send the start of a request head and never the end; when each opened."""
    socks = {}
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        socks[sock] = time.monotonic()
    return socks


def _close_times(socks: dict[socket.socket, float], limit: float) -> list[float]:
    """Seconds each socket lived until the server closed it (`limit`: not within limit)."""
    times = []
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                selector.unregister(key.fileobj)
                times.append(time.monotonic() - socks[key.fileobj])
        times += [limit] * len(selector.get_map())
    for sock in socks:
        sock.close()
    return times


@pytest.mark.host_only  # the exporter's HTTP server alone; libvirt only answers libvirt_up
def test_hostile_clients_do_not_stop_metrics():
    """200 malformed requests, 60 half-open connections and 50 clients sending a byte a second
    for 10 s, then a burst of 200 half-open connections, more than the server's cap: /metrics
    answers within 1 s all along, and threads and descriptors come back to where they were."""
    exporter = ExporterProcess().start()
    process = psutil.Process(exporter.proc.pid)
    threads, fds = process.num_threads(), process.num_fds()
    probe = Probe(exporter, count=300)
    try:
        probe.start()
        until = time.monotonic() + 10
        drops: list[float] = []
        slow_answers: list[bytes] = []
        slow = [threading.Thread(target=_slow_client, args=(exporter.port, until, drops,
                                                            slow_answers)) for _ in range(50)]
        for thread in slow:
            thread.start()
        half_open = _half_open(exporter.port, 60)
        answers = [_exchange(exporter.port, BAD_REQUESTS[i % len(BAD_REQUESTS)]())
                   for i in range(200)]
        half_closed = _close_times(half_open, http_server.HEAD_TIMEOUT + 3)
        for thread in slow:
            thread.join(timeout=15)

        # more half-open connections than the cap: the oldest are dropped for the newest
        burst_at = time.monotonic()
        burst = _half_open(exporter.port, 200)
        burst_took = time.monotonic() - burst_at
        time.sleep(0.5)
        during_burst = len(probe.latencies)
        burst_threads = process.num_threads()
        burst_closed = _close_times(burst, http_server.HEAD_TIMEOUT + 3)
        time.sleep(1)
    finally:
        probe.done.set()
        probe.join(timeout=10)

    try:
        assert probe.failures == [], probe.failures[:5]
        assert len(probe.latencies) > 60 and max(probe.latencies) < 1.0, (
            len(probe.latencies), max(probe.latencies))
        assert len(probe.latencies) > during_burst, "no scrape after the burst"
        # an error status, or an error page alone (an HTTP/0.9-looking line), or a close
        errors = [re.search(rb"^HTTP/1\.[01] ([45]\d\d) |Error code: ([45]\d\d)", a) for a in answers]
        assert all(e or a == b"" for e, a in zip(errors, answers, strict=True)), [
            a[:200] for e, a in zip(errors, answers, strict=True) if not (e or a == b"")][:3]
        assert sum(e is not None for e in errors) > len(answers) / 2, "most garbage unanswered"
        assert max(half_closed) < http_server.HEAD_TIMEOUT + 2, half_closed
        assert slow_answers == [], slow_answers[:2]  # no slow head ever got served
        assert len(drops) >= 50 and max(drops) < http_server.HEAD_TIMEOUT + 2, drops
        assert burst_threads <= threads + http_server.MAX_CONNECTIONS + 5, burst_threads
        # dropped early for newer ones (the server reaps the rest after HEAD_TIMEOUT)
        evicted = sum(c < http_server.HEAD_TIMEOUT - 1 for c in burst_closed)
        assert evicted >= 200 - http_server.MAX_CONNECTIONS - 5, (evicted, burst_took, burst_closed)
        assert max(burst_closed) < http_server.HEAD_TIMEOUT + 2, burst_closed
        exporter.wait_for(lambda: process.num_threads() <= threads + 2
                          and process.num_fds() <= fds + 2, 10, "threads and fds back")
        assert "Traceback" not in exporter.log()
    finally:
        exporter.stop()


# --- TLS and basic auth, side by side with node_exporter ----------------------------------------


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA; a server certificate for 127.0.0.1 and a client certificate it signed; a
    self-signed client certificate it did not."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", d / "ca.key", "-out", d / "ca.crt", "-days", "2",
             "-subj", "/CN=lse test CA")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr",
                 "-subj", f"/CN=lse {name}")
        _openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey",
                 d / "ca.key", "-CAcreateserial", "-out", d / f"{name}.crt", "-days", "2",
                 "-extfile", d / "san.ext")
    _openssl("req", "-x509", *ec, "-keyout", d / "rogue.key", "-out", d / "rogue.crt",
             "-days", "2", "-subj", "/CN=lse rogue")
    return d


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"port {port} never opened: {log.read_text()[-2000:]}")


class Pair:
    """node_exporter and this exporter, each on its own port, given the same web config."""

    def __init__(self, config: Path) -> None:
        self.exporter = ExporterProcess(f"--web.config.file={config}")
        self.node_port = free_port()
        self.node_log = Path(self.exporter.state_dir) / "node_exporter.log"
        self.node: subprocess.Popen | None = None
        self.config = config

    def __enter__(self) -> Pair:
        # ExporterProcess.start() waits for libvirt_up over plain HTTP without credentials,
        # which TLS or basic auth refuse: start it the same way, wait for its port instead.
        with open(self.exporter.log_path, "ab") as log:
            self.exporter.proc = subprocess.Popen(
                [sys.executable, "-m", "libvirt_snapshot_exporter", *self.exporter.flags],
                stdout=log, stderr=subprocess.STDOUT)
        with open(self.node_log, "ab") as log:
            self.node = subprocess.Popen(
                [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{self.node_port}",
                 f"--web.config.file={self.config}", "--collector.disable-defaults",
                 "--collector.loadavg"], stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.exporter.port, self.exporter.proc, self.exporter.log_path)
        _wait_port(self.node_port, self.node, self.node_log)
        return self

    def __exit__(self, *exc: object) -> None:
        self.exporter.stop()
        self.node.terminate()
        self.node.wait(timeout=10)

    def both(self, **request: object) -> tuple[tuple, tuple]:
        return (_request(self.node_port, **request), _request(self.exporter.port, **request))


def _request(port: int, tls: bool = True, user: str | None = None, password: str = "",
             cert: str | None = None, pki: Path | None = None,
             max_version: ssl.TLSVersion | None = None) -> tuple:
    """What a client sees of GET /metrics: status (or 'refused'), a few headers, TLS version
    and (up to TLS 1.2) cipher."""
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{password}".encode()).decode()
    if tls:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if cert:
            ctx.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
        if max_version:
            ctx.maximum_version = max_version
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics", headers=headers)
        tls_info = (conn.sock.version(), conn.sock.cipher()[0]) if tls else (None, None)
        if tls_info[0] == "TLSv1.3":  # suites not configurable: each library has its order
            tls_info = ("TLSv1.3", None)
        response = conn.getresponse()
        response.read()
        return (response.status, response.getheader("WWW-Authenticate"),
                response.getheader("X-Frame-Options"), *tls_info)
    except (OSError, http.client.HTTPException):  # ssl.SSLError is an OSError
        return ("refused",)
    finally:
        conn.close()


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()


@pytest.mark.host_only  # TLS and auth of the HTTP server against node_exporter; no libvirt
def test_same_web_config_same_answers_as_node_exporter(pki, tmp_path):
    users = f"basic_auth_users:\n  alice: '{_hash('secret')}'\n"
    tls = f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n"
    cases = {
        "auth over plain HTTP": (users, [
            (dict(tls=False), 401), (dict(tls=False, user="alice", password="secret"), 200),
            (dict(tls=False, user="alice", password="wrong"), 401),
            (dict(tls=False, user="mallory", password="secret"), 401),
        ]),
        "TLS, auth and a header": (
            tls + users + "http_server_config:\n  headers:\n    X-Frame-Options: deny\n", [
                (dict(), 401), (dict(user="alice", password="secret"), 200),
                (dict(user="alice", password="wrong"), 401),
                (dict(tls=False, user="alice", password="secret"), 400),
            ]),
        "client certificates": (
            tls + "  client_auth_type: RequireAndVerifyClientCert\n"
                  f"  client_ca_file: {pki}/ca.crt\n", [
                (dict(), "refused"), (dict(cert="client"), 200), (dict(cert="rogue"), "refused"),
                (dict(tls=False), 400),
            ]),
        "TLS 1.3 only": (tls + "  min_version: TLS13\n", [
            (dict(), 200), (dict(max_version=ssl.TLSVersion.TLSv1_2), "refused"),
        ]),
        "one TLS 1.2 cipher": (
            tls + "  max_version: TLS12\n  cipher_suites:\n"
                  "    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n", [(dict(), 200)]),
    }
    for name, (text, requests) in cases.items():
        config = tmp_path / f"{name.replace(' ', '_')}.yml"
        config.write_text(text)
        with Pair(config) as pair:
            for request, expected in requests:
                node, ours = pair.both(pki=pki, **request)
                assert node == ours, (name, request, node, ours)
                assert ours[0] == expected, (name, request, ours)
            if "tls_server_config" in text:  # a handshake is bounded like a request head
                stalled = {}
                for start in (b"", b"\x16\x03\x01\x00"):  # silent; a hello cut short
                    sock = socket.create_connection(("127.0.0.1", pair.exporter.port))
                    sock.sendall(start)
                    stalled[sock] = time.monotonic()
                assert max(_close_times(stalled, http_server.HEAD_TIMEOUT + 3)) < http_server.HEAD_TIMEOUT + 2
    # what the last two cases negotiated, as seen by the client
    assert ours[3:] == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"), ours


@pytest.mark.host_only  # the exporter refuses the file before it connects to libvirt
def test_bad_web_config_fails_startup_like_node_exporter(pki, tmp_path):
    cases = {
        "unreadable": None,
        "bad YAML": "tls_server_config: [\n",
        "unknown key": f"tls_server_config:\n  cert_file: {pki}/server.crt\n"
                       f"  key_file: {pki}/server.key\n  keyfile: x\n",
        "bad hash": "basic_auth_users:\n  alice: secret\n",
        "missing cert": f"tls_server_config:\n  cert_file: {pki}/none.crt\n"
                        f"  key_file: {pki}/server.key\n",
    }
    for name, text in cases.items():
        config = tmp_path / f"{name.replace(' ', '_')}.yml"
        if text is not None:
            config.write_text(text)
        node = subprocess.run(
            [NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{free_port()}",
             f"--web.config.file={config}", "--collector.disable-defaults"],
            capture_output=True, text=True, timeout=20)
        ours = subprocess.run(
            [sys.executable, "-m", "libvirt_snapshot_exporter",
             f"--web.listen-address=127.0.0.1:{free_port()}", "--state.directory=",
             f"--web.config.file={config}"], capture_output=True, text=True, timeout=20)
        assert node.returncode == 1, (name, node)
        lines = ours.stderr.strip().splitlines()
        assert ours.returncode == 2 and len(lines) == 1, (name, ours)
        assert lines[0].startswith(f"libvirt-snapshot-exporter: error: web.config.file {config}")


# --- the systemd unit ----------------------------------------------------------------------------


UNIT = ROOT / "contrib" / "libvirt-snapshot-exporter.service"
INSTALLED = "/opt/libvirt-snapshot-exporter/bin/libvirt-snapshot-exporter"


def _verify(unit_text: str, directory: Path) -> subprocess.CompletedProcess:
    path = directory / UNIT.name
    path.write_text(unit_text)
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.host_only  # the unit file and the host's systemd-analyze; no libvirt
def test_systemd_unit_verifies(tmp_path):
    """`systemd-analyze verify` fails when ExecStart's program does not exist, and nothing is
    installed under /opt here: verify a copy whose ExecStart names this checkout's console
    script instead (the only line that differs). verify exits 0 on unknown keys or bad values
    and only warns: any output at all fails the test (checked on a copy with a typo)."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    script = Path(sys.executable).parent / "libvirt-snapshot-exporter"
    assert os.access(script, os.X_OK), script
    copy = text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={script} ")
    result = _verify(copy, tmp_path)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result

    typo = _verify(copy.replace("ProtectHome=yes", "ProtectHom=yes"), tmp_path)
    assert "Unknown key" in typo.stderr, typo

    security = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                               str(tmp_path / UNIT.name)], capture_output=True, text=True,
                              timeout=60)
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert exposure and float(exposure.group(1)) <= 2.5, security.stdout[-500:]

    for line in ("User=libvirt-snapshot-exporter", "ProtectSystem=strict",
                 "StateDirectory=libvirt-snapshot-exporter", "NoNewPrivileges=yes",
                 "ProtectHome=yes", "PrivateTmp=yes", "Restart=on-failure"):
        assert re.search(rf"^{re.escape(line)}$", text, re.M), line
    assert not re.search(r"^(SupplementaryGroups|Group)=libvirt$", text, re.M)


@pytest.mark.host_only  # the sysusers file and the host's systemd-sysusers; no libvirt
def test_sysusers_creates_the_user(tmp_path):
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                    str(ROOT / "contrib" / "libvirt-snapshot-exporter.sysusers")],
                   check=True, capture_output=True, timeout=60)
    (entry,) = [line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()
                if line.startswith("libvirt-snapshot-exporter:")]
    assert entry[5] == "/var/lib/libvirt-snapshot-exporter" and entry[6] == "/usr/sbin/nologin"
    assert int(entry[2]) < 1000  # a system user


def _read_as_nobody(path: str, caps: list[str]) -> subprocess.CompletedProcess:
    """cat as user nobody holding exactly these capabilities, ambient as systemd grants them."""
    wanted = "".join(f",+{c}" for c in caps)
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--no-new-privs",
         f"--inh-caps=-all{wanted}", f"--bounding-set=-all{wanted}",
         *([f"--ambient-caps={wanted[1:]}"] if caps else []), "cat", path],
        capture_output=True, text=True, timeout=30)


def test_unit_capabilities_are_what_reading_qemu_io_takes(bare):
    """/proc/<pid>/io is mode 0400 of QEMU's user: another user reads it with CAP_SYS_PTRACE and
    CAP_DAC_READ_SEARCH together (the unit's two), and with neither of them alone."""
    text = UNIT.read_text()
    caps = ["sys_ptrace", "dac_read_search"]
    for key in ("AmbientCapabilities", "CapabilityBoundingSet"):
        assert re.search(rf"^{key}=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH$", text, re.M), key
    io = f"/proc/{testbed.qemu_pid(bare)}/io"
    both = _read_as_nobody(io, caps)
    assert both.returncode == 0 and "write_bytes:" in both.stdout, both
    for alone in ([], ["sys_ptrace"], ["dac_read_search"]):
        refused = _read_as_nobody(io, alone)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, (alone, refused)
