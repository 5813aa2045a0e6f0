"""The exporter as a real process (libvirt's test:///default driver) fed hostile and careless
input: at start each case exits 2 with one line or is served through; at run time nothing a
client sends ends in a traceback; SIGTERM ends within a bound whatever libvirtd does."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt_snapshot_exporter
import pytest
from lse_devtools.exporter_proc import ExporterProcess, free_port
from lse_devtools.handbuilt_trace import slow_trace
from lse_devtools.silent_libvirtd import SilentLibvirtd
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

TEST_URI = "test:///default"
PROC = Path(__file__).parent / "proc"
ENTRY = {
    "domain": "test", "snapshot": "s1", "operation": "create", "kind": "internal",
    "memory": True, "depth": 1, "start": 1700000000.0, "end": 1700000040.5,
    "duration_seconds": 40.5, "paused_seconds": 40.5, "outcome": "success",
}


def exporter(*flags: str, state_dir: str | None = None, port: int | None = None
             ) -> ExporterProcess:
    return ExporterProcess(*flags, state_dir=state_dir, uri=TEST_URI, port=port)


def no_traceback(proc: ExporterProcess) -> None:
    assert "Traceback" not in proc.log(), proc.log()[-3000:]


def request(port: int, method: str = "GET", path: str = "/", headers: dict | None = None,
            host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def log_lines(proc: ExporterProcess, needle: str) -> list[str]:
    return [line for line in proc.log().splitlines() if needle in line]


# --- the operations log and the state directory at start ------------------------------------------


@pytest.mark.parametrize("content", [
    b"\xff\n", b"\xff\xfe\x00\x00garbage", b"42\nnull\n[]\n{}\n",
    json.dumps({**ENTRY, "start": "soon"}).encode() + b"\n",
    json.dumps({**ENTRY, "domain": None}).encode() + b"\n",
    b'{"domain": "test", "duration_seconds": NaN}\n',
])
def test_log_that_is_not_entries_is_skipped_and_served_through(tmp_path, content):
    (tmp_path / "operations.jsonl").write_bytes(
        json.dumps(ENTRY).encode() + b"\n" + content)
    proc = exporter(state_dir=str(tmp_path)).start()
    try:
        for path in ("/", "/api/operations", "/metrics"):
            status, _, _ = request(proc.port, path=path)
            assert status == 200, path
        data = json.loads(proc.get("/api/operations"))
        assert [o["snapshot"] for o in data["operations"]] == ["s1"]
        assert proc.value("libvirt_snapshot_exporter_state_invalid_entries") >= 1
        assert proc.value("libvirt_snapshot_exporter_state_load_success") == 1
        assert len(log_lines(proc, "not valid entries")) == 1
        no_traceback(proc)
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_special_file_in_place_of_the_log_is_served_through(tmp_path, kind):
    path = tmp_path / "operations.jsonl"
    path.mkdir() if kind == "directory" else os.mkfifo(path)
    proc = exporter(state_dir=str(tmp_path)).start()
    try:
        assert proc.value("libvirt_snapshot_exporter_state_load_success") == 0
        why = "Is a directory" if kind == "directory" else "not a regular file"
        assert len(log_lines(proc, why)) == 1
        no_traceback(proc)
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("who", [
    ["--reuid=65534", "--regid=65534", "--clear-groups"],  # nobody
    ["--bounding-set=-all,+sys_ptrace"],  # root in a container with only CAP_SYS_PTRACE
])
def test_state_directory_that_cannot_be_searched_is_served_through(tmp_path, who):
    with searchable_by_others(sys.prefix, sys.executable, libvirt_snapshot_exporter.__file__):
        _served_through_unsearchable_state(tmp_path, who)


@contextlib.contextmanager
def searchable_by_others(*paths: str) -> Iterator[None]:
    """The directories on the way to paths searchable by others (o+x) for the block, and put
    back after: nobody runs this checkout's interpreter and package, which a clone in a
    `mktemp -d` directory (0700) would hide from it."""
    changed: dict[Path, int] = {}
    try:
        for path in paths:
            for directory in Path(os.path.realpath(path)).parents:
                mode = stat.S_IMODE(directory.stat().st_mode)
                if not mode & stat.S_IXOTH and directory not in changed:
                    directory.chmod(mode | stat.S_IXOTH)
                    changed[directory] = mode
        yield
    finally:
        for directory, mode in changed.items():
            directory.chmod(mode)


def _served_through_unsearchable_state(tmp_path: Path, who: list[str]) -> None:
    base = Path(tempfile.mkdtemp(prefix="lse-unsearchable-"))  # pytest's tmp is root's only
    base.chmod(0o755)
    state = base / "state"
    state.mkdir()
    (state / "operations.jsonl").write_text(json.dumps(ENTRY) + "\n")
    state.chmod(0)
    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["setpriv", *who, sys.executable, "-m", "libvirt_snapshot_exporter",
             f"--libvirt.uri={TEST_URI}", f"--web.listen-address=127.0.0.1:{port}",
             f"--state.directory={state}"], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                status, _, body = request(port, path="/metrics")
                if status == 200 and b"\nlibvirt_up 1.0" in body:
                    break
            except OSError:
                time.sleep(0.2)
        assert process.poll() is None, log.read_text()
        assert b"libvirt_snapshot_exporter_state_load_success 0.0" in body
        assert request(port, path="/api/operations")[0] == 200
        text = log.read_text()
        assert "Traceback" not in text, text
        errors = [line for line in text.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "Permission denied" in errors[0], text
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        state.chmod(0o700)
        shutil.rmtree(base)


def test_read_only_state_directory_is_read_and_served_unlocked(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (mount / "operations.jsonl").write_text(json.dumps(ENTRY) + "\n")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        proc = exporter(state_dir=str(mount)).start()
        try:
            assert [o["snapshot"] for o in json.loads(proc.get("/api/operations"))["operations"]
                    ] == ["s1"]
            assert proc.value("libvirt_snapshot_exporter_state_load_success") == 1
            (line,) = log_lines(proc, "cannot lock operations.lock")
            assert "Read-only file system" in line, line
            no_traceback(proc)
        finally:
            assert proc.stop() == 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_second_exporter_on_one_state_directory_exits_2(tmp_path):
    first = exporter(state_dir=str(tmp_path)).start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "libvirt_snapshot_exporter", f"--libvirt.uri={TEST_URI}",
             f"--web.listen-address=127.0.0.1:{free_port()}", f"--state.directory={tmp_path}"],
            capture_output=True, text=True, timeout=30)
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another exporter" in lines[0], second.stderr
        assert f"pid {first.proc.pid}" in lines[0]
    finally:
        assert first.stop() == 0
    exporter(state_dir=str(tmp_path)).start().stop()  # the lock went with the first


# --- shutdown whatever libvirtd does ---------------------------------------------------------------


def test_sigterm_ends_promptly_while_libvirtd_accepts_and_never_answers(tmp_path):
    """The unit's stop timeout is 20 s; the log must be written before the exit."""
    unit = (Path(__file__).parents[2] / "contrib/libvirt-snapshot-exporter.service").read_text()
    assert "TimeoutStopSec=20s" in unit
    silent = SilentLibvirtd(tmp_path / "libvirt-sock")
    silent.start()
    state = tmp_path / "state"
    state.mkdir()
    kept = json.dumps(ENTRY) + "\n"
    (state / "operations.jsonl").write_text(kept)
    proc = ExporterProcess("--libvirt.timeout=3", state_dir=str(state),
                           uri=f"qemu+unix:///system?socket={tmp_path / 'libvirt-sock'}")
    try:
        proc.proc = subprocess.Popen(
            [sys.executable, "-m", "libvirt_snapshot_exporter", *proc.flags],
            stdout=open(proc.log_path, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
        proc.wait_for(lambda: silent.accepted, 15, "a connection to the silent libvirtd")
        proc.wait_for(lambda: "no answer within 3 s" in proc.log(), 20, "the connect deadline")
        assert proc.value("libvirt_up") == 0
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=20)
        took = time.monotonic() - signalled
        proc.proc = None
        assert code == 0 and took < 15, (code, took)
        # Stopping left the log as it was (test_shutdown.py proves a pending entry is written).
        assert (state / "operations.jsonl").read_text() == kept
        no_traceback(proc)
    finally:
        if proc.proc is not None:
            proc.proc.kill()
        silent.close()


# --- one failing source fails alone ----------------------------------------------------------------


def _procfs(tmp_path: Path, name: str, text: str | None) -> Path:
    procfs = tmp_path / "proc"
    procfs.mkdir()
    (procfs / "pressure").mkdir()
    shutil.copy(PROC / "meminfo", procfs / "meminfo")
    shutil.copy(PROC / "vmstat", procfs / "vmstat")
    shutil.copy(PROC / "pressure-memory", procfs / "pressure" / "memory")
    target = procfs / name
    if text is None:
        target.unlink()
    elif text == "<directory>":
        target.unlink()
        target.mkdir()
    else:
        target.write_text(text)
    return procfs


@pytest.mark.parametrize("name, text", [
    ("meminfo", "MemTotal:       abc kB\nMemFree: 1 kB\n"),
    ("meminfo", "MemTotal: 99999999999999999999999999999999 kB\nMemFree\n:\n"),
    ("meminfo", None), ("meminfo", "<directory>"),
    ("vmstat", "pgpgout x\nnr_dirtied\n"),
    ("pressure/memory", "some avg10=0.00 total=abc\nfull\n"),
])
def test_bad_host_figures_fail_the_host_source_alone(tmp_path, name, text):
    procfs = _procfs(tmp_path, name, text)
    proc = exporter(f"--path.procfs={procfs}").start()
    try:
        proc.wait_for(lambda: proc.value("libvirt_snapshot_exporter_collector_success",
                                         collector="host") == 0, 10, "host success 0")
        assert proc.value("libvirt_up") == 1
        assert proc.value("libvirt_domain_info", domain="test") == 1
        assert proc.value("libvirt_snapshot_exporter_collector_success", collector="domains") == 1
        time.sleep(1.5)  # several cycles: still one line
        assert len(log_lines(proc, "collector host failed")) == 1, proc.log()
        no_traceback(proc)
        shutil.rmtree(procfs)
        _procfs(tmp_path, "meminfo", (PROC / "meminfo").read_text())
        proc.wait_for(lambda: proc.value("libvirt_snapshot_exporter_collector_success",
                                         collector="host") == 1, 10, "host success 1 again")
        assert len(log_lines(proc, "collector host works again")) == 1
    finally:
        assert proc.stop() == 0


# --- HTTP: no request ends in a traceback ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    entries = [{**ENTRY, "snapshot": f"s{n}", "start": ENTRY["start"] + n,
                "end": ENTRY["end"] + n} for n in range(2500)]
    (state / "operations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    proc = ExporterProcess("--operations.log-size=5000", state_dir=str(state),
                           uri=TEST_URI, port=free_port()).start()
    yield proc
    assert proc.stop() == 0
    no_traceback(proc)


def test_operations_are_paged(served):
    data = json.loads(served.get("/api/operations"))
    assert len(data["operations"]) == 1000 and data["total"] == 2500
    assert data["operations"][0]["snapshot"] == "s2499" and data["next_offset"] == 1000
    page = json.loads(served.get("/api/operations?offset=2000&limit=600"))
    assert [o["snapshot"] for o in page["operations"]][:2] == ["s499", "s498"]
    assert len(page["operations"]) == 500 and page["next_offset"] is None
    assert json.loads(served.get("/api/operations?offset=9999"))["operations"] == []
    assert len(json.loads(served.get("/api/operations?limit=10000"))["operations"]) == 2500
    for bad in ("limit=0", "limit=10001", "limit=-1", "limit=1e3", "limit=abc", "offset=-5",
                "offset=" + "9" * 5000, "limit=%00"):
        status, _, body = request(served.port, path=f"/api/operations?{bad}")
        assert status == 400 and b"must be an integer" in body, (bad, body)


def test_landing_page_shows_the_newest_operations_only(served):
    status, _, body = request(served.port, path="/")
    assert status == 200
    assert body.count(b"<tr><td>") == 100 and b"the 100 newest of 2500" in body


HOSTILE = '</script><script>alert(1)</script><img src=x onerror=alert(2)>&"\''


def test_hostile_names_and_traces_on_disk_stay_text_on_the_pages(tmp_path):
    """A log and traces anyone with the state directory may have written: names that are
    markup, a trace whose device is markup, a trace file that is no trace."""
    state = tmp_path / "state"
    (state / "traces").mkdir(parents=True)
    trace = slow_trace(HOSTILE, HOSTILE)
    entry = {**ENTRY, "domain": HOSTILE, "snapshot": HOSTILE, "error": HOSTILE,
             "start": trace.start, "end": trace.end, "duration_seconds": trace.end - trace.start}
    broken = {**entry, "snapshot": "broken"}
    (state / "operations.jsonl").write_text(json.dumps(entry) + "\n" + json.dumps(broken) + "\n")
    (state / "traces" / f"{trace.id}.json").write_text(
        json.dumps({**trace.to_json(), "device": HOSTILE}))
    broken_id = slow_trace(HOSTILE, "broken").id
    (state / "traces" / f"{broken_id}.json").write_text('{"version": 1, "t": [')
    proc = exporter(state_dir=str(state), port=free_port()).start()
    try:
        status, _, landing = request(proc.port, path="/")
        assert status == 200 and landing.count(b'<a href="operations/') == 2
        status, _, body = request(proc.port, path=f"/operations/{trace.id}")
        assert status == 200 and b'data-state=loading' in body
        for text in (landing, body):
            assert b"<img" not in text and b"alert(1)</script>" not in text
            assert b"&lt;/script&gt;&lt;script&gt;alert(1)" in text
        assert body.count(b"<script") == 3
        status, _, body = request(proc.port, path=f"/operations/{broken_id}")
        assert status == 200 and b"No trace is kept for this operation" in body
        status, headers, body = request(proc.port, path="/static/uplot.iife.min.js")
        assert status == 200 and body.startswith(b"/*! https://github.com/leeoniya/uPlot")
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    finally:
        assert proc.stop() == 0
    no_traceback(proc)


def _bad_traces(state: Path) -> dict[str, str]:
    """Trace files that are no traces, each under the name of a logged operation: what each
    is, by id; and the entries of the log."""
    good = slow_trace()
    data = good.to_json()
    folder = state / "traces"
    folder.mkdir(parents=True)
    kinds = ["good", "fifo", "huge", "one timestamp", "overflowing counter", "another id",
             "thread key without colons", "symlink"]
    ids = {f"{n:016x}": kind for n, kind in enumerate(kinds, 1)}
    entries = [{**ENTRY, "id": trace_id, "domain": good.domain, "snapshot": kind,
                "start": good.start, "end": good.end, "duration_seconds": good.end - good.start}
               for trace_id, kind in ids.items()]
    (state / "operations.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    for trace_id, kind in ids.items():
        path = folder / f"{trace_id}.json"
        trace = {**data, "id": trace_id}
        if kind == "huge":
            trace["counters"] = {f"c{i}": [i] * len(data["t"]) for i in range(60)}
            trace["threads"] = {f"other:S:w{i}": [1] * len(data["t"]) for i in range(60)}
            body = json.dumps(trace) + " " * 59_000_000  # under trace.max-bytes (the default)
        elif kind == "one timestamp":  # what made the page quadratic
            size = 3000
            trace.update(t=[good.start] * size, n=[1] * size, gauges={}, counters={},
                         threads={"worker:D:rq_qos_wait": [1] * size})
            body = json.dumps(trace)
        elif kind == "overflowing counter":  # 1e999: a JSON number that overflows to inf
            written = list(data["counters"]["qemu_write_bytes"])
            written[3] = float("inf")
            trace["counters"] = {**data["counters"], "qemu_write_bytes": written}
            body = json.dumps(trace).replace("Infinity", "1e999")
        elif kind == "another id":
            body = json.dumps(data)
        elif kind == "thread key without colons":
            trace["threads"] = {"main": [1] * len(data["t"])}
            body = json.dumps(trace)
        else:
            body = json.dumps(trace)
        path.write_text(body)
    (folder / ("x" * 250 + ".json")).write_text("{}")  # an entry that is no trace's
    return ids


def _swap_in_special_files(state: Path, ids: dict[str, str]) -> None:
    """Once the exporter runs (its index holds them): a FIFO and a symlink in place of two
    traces, as anyone with the state directory could put them."""
    for trace_id, kind in ids.items():
        path = state / "traces" / f"{trace_id}.json"
        if kind == "fifo":
            path.unlink()
            os.mkfifo(path)
        elif kind == "symlink":
            path.unlink()
            path.symlink_to(state / "traces" / f"{next(iter(ids))}.json")


def test_trace_files_that_are_no_traces_are_dropped_not_served(tmp_path):
    """A FIFO, a 59 MB file, a trace whose points share one timestamp, Infinity in a counter,
    the trace of another operation, a malformed thread key, a symlink: each page answers at
    once, without the trace (one log line each, the file removed); the good one is drawn."""
    state = tmp_path / "state"
    ids = _bad_traces(state)
    proc = exporter(state_dir=str(state), port=free_port()).start()
    try:
        _swap_in_special_files(state, ids)
        for trace_id, kind in ids.items():
            started = time.monotonic()
            status, _, body = request(proc.port, path=f"/operations/{trace_id}")
            assert status == 200 and time.monotonic() - started < 5, kind
            assert (b"No trace is kept" in body) == (kind != "good"), kind
            status, _, body = request(proc.port, path=f"/api/operations/{trace_id}/trace")
            assert status == (200 if kind == "good" else 404), kind
        dropped = log_lines(proc, ": dropped")
        assert len(dropped) == len(ids) - 1, dropped
        assert sorted(p.name for p in (state / "traces").iterdir() if len(p.name) < 30) == [
            f"{next(iter(ids))}.json"]
        (skipped,) = log_lines(proc, "entries that are not traces")
        assert "skipped 1 entries" in skipped, skipped
        assert proc.value("libvirt_up") == 1
    finally:
        assert proc.stop() == 0
    no_traceback(proc)


@pytest.mark.parametrize("seed", ["fifo", "400 digits", "1e-300 s", "deep"])
def test_a_bad_rate_seed_stops_the_start_with_one_line(tmp_path, seed):
    """At the real start (not --check-config alone): exit 2 and one line, never a hang."""
    path = tmp_path / "seed.json"
    row = {"domain": "vm", "operation": "create", "outcome": "success", "kind": "internal",
           "start": 1700000000.0, "end": 1700000003.0, "duration_seconds": 3.0,
           "snapshot": "s", "disk_cache": "writeback", "qemu_written_bytes": 10**9}
    if seed == "fifo":
        os.mkfifo(path)
    elif seed == "deep":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        row.update({"400 digits": {"qemu_written_bytes": 10**400},
                    "1e-300 s": {"duration_seconds": 1e-300}}[seed])
        path.write_text(json.dumps({"operations": [row]}))
    result = subprocess.run(
        [sys.executable, "-m", "libvirt_snapshot_exporter", f"--libvirt.uri={TEST_URI}",
         f"--web.listen-address=127.0.0.1:{free_port()}", f"--state.directory={tmp_path}",
         f"--verdict.rate-seed={path}"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "verdict.rate-seed" in lines[0], result.stderr


def test_operations_readers_do_not_hold_up_scrapes(served):
    """Four clients fetching the biggest page in a loop; scrapes still answer quickly (the
    bound is loose: a shared 2-core machine)."""
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            served.get("/api/operations?limit=10000", timeout=30)

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for thread in readers:
        thread.start()
    try:
        latencies = []
        for _ in range(40):
            start = time.perf_counter()
            served.get("/metrics")
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)
    finally:
        stop.set()
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.5 and latencies[len(latencies) * 9 // 10] < 3, latencies


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "FOO", "OPTIONS", "TRACE"])
def test_methods_other_than_get_and_head_are_405(served, method):
    for path in ("/metrics", "/", "/api/operations", "/-/healthy", "/nowhere"):
        status, headers, _ = request(served.port, method, path)
        assert status == 405 and headers["Allow"] == "GET, HEAD", (method, path)


@pytest.mark.parametrize("path", ["/metrics", "/", "/api/operations", "/-/healthy"])
def test_head_has_the_headers_of_get_and_no_body(served, path):
    get_status, get_headers, get_body = request(served.port, "GET", path)
    status, headers, body = request(served.port, "HEAD", path)
    assert (status, body) == (200, b"")
    assert headers["Content-Type"] == get_headers["Content-Type"]
    assert int(headers["Content-Length"]) > 0


def test_server_header_names_no_python(served):
    for method, path in (("GET", "/metrics"), ("GET", "/nowhere"), ("POST", "/")):
        _, headers, _ = request(served.port, method, path)
        assert headers["Server"] == "libvirt-snapshot-exporter", headers
    answer = _raw(served.port, b"GARBAGE\r\n\r\n")
    assert b"Python" not in answer and b"400" in answer.split(b"\r\n")[0], answer


def _raw(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("payload", [
    b"GET /%00%ff%0d%0a HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /api/operations?limit=%ff%fe&offset=\xff HTTP/1.1\r\n\r\n",
    b"GET /metrics?name[]=%ff&name[]=%00 HTTP/1.1\r\nAccept: \xff\xfe\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=x.y\r\n"
    b"Accept-Encoding: \xff, gzip;q=nonsense\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nAccept: text/plain;version=abc;escaping=\xff\r\n\r\n",
    b"GET / HTTP/1.1\r\nAuthorization: Basic \xff\xff\r\n\r\n",
    b"GET " + b"/" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
    b"\x16\x03\x01\x00\x05hello", b"\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
])
def test_garbage_requests_answer_without_a_traceback(served, payload):
    answer = _raw(served.port, payload)
    status = answer.split(b"\r\n", 1)[0]
    assert not status.startswith(b"HTTP/1.0 5"), answer[:300]
    no_traceback(served)


# --- exposition: what prometheus_client's own exposition honours ---------------------------------


def test_plain_text_by_default(served):
    status, headers, body = request(served.port, path="/metrics")
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"libvirt_up", "libvirt_domain_info", "libvirt_node_memory_free_bytes"} <= names


def test_openmetrics_when_asked(served):
    accept = ("application/openmetrics-text;version=1.0.0;q=0.5,"
              "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")  # what Prometheus sends
    status, headers, body = request(served.port, path="/metrics", headers={"Accept": accept})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_om(text)}  # raises on duplicate families
    assert families["libvirt_up"].samples[0].value == 1
    assert families["libvirt_snapshot_exporter_reconnects"].type == "counter"
    assert "libvirt_domain_info" in families


def test_gzip_when_accepted(served):
    status, headers, body = request(served.port, path="/metrics",
                                    headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and int(headers["Content-Length"]) == len(body)
    names = {f.name for f in text_string_to_metric_families(gzip.decompress(body).decode())}
    assert "libvirt_domain_info" in names


def test_name_filters(served):
    status, _, body = request(
        served.port, path="/metrics?name[]=libvirt_up&name[]=libvirt_domain_info")
    samples = {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples == {"libvirt_up", "libvirt_domain_info"}


# --- basic auth that cannot crash ----------------------------------------------------------------


def test_non_utf8_user_gets_401_not_500(tmp_path):
    import bcrypt

    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: '"
                   + bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode() + "'\n")
    proc = exporter(f"--web.config.file={web}")
    proc.proc = subprocess.Popen([sys.executable, "-m", "libvirt_snapshot_exporter", *proc.flags],
                                 stdout=open(proc.log_path, "ab"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT)
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:secret").decode()}
        proc.wait_for(lambda: _status(proc.port, good) == 200, 30, "the exporter up")
        for credentials in (b"\xff\xfe:secret", b"\xed\xa0\x80:x", b"alice:\xff", b"\x00:\x00"):
            value = b"Basic " + base64.b64encode(credentials)
            answer = _raw(proc.port, b"GET /metrics HTTP/1.1\r\nAuthorization: " + value
                          + b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 401"), answer[:200]
        no_traceback(proc)
    finally:
        proc.stop()


def _status(port: int, headers: dict) -> int:
    try:
        return request(port, path="/metrics", headers=headers)[0]
    except OSError:
        return 0


# --- listening on IPv6 and IPv4 --------------------------------------------------------------------


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("address, reachable", [
    (":{port}", ["127.0.0.1", "::1"]),
    ("[::]:{port}", ["127.0.0.1", "::1"]),
    ("[::1]:{port}", ["::1"]),
    ("0.0.0.0:{port}", ["127.0.0.1"]),
])
def test_listen_on_ipv6_and_ipv4(tmp_path, address, reachable):
    if "::1" in reachable and not _ipv6():
        pytest.skip("no IPv6 on this machine")
    port = free_port()
    proc = exporter(port=port)
    proc.flags[0] = f"--web.listen-address={address.format(port=port)}"
    proc.proc = subprocess.Popen([sys.executable, "-m", "libvirt_snapshot_exporter", *proc.flags],
                                 stdout=open(proc.log_path, "ab"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT)
    try:
        proc.wait_for(lambda: "listening on" in proc.log(), 30, "listening")
        for host in reachable:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert request(port, path="/-/healthy", host=host)[0] == 200
                    break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline, host
                    time.sleep(0.2)
        if reachable == ["::1"]:
            with pytest.raises(OSError):
                request(port, path="/-/healthy", host="127.0.0.1")
    finally:
        assert proc.stop() == 0


# --- signals ---------------------------------------------------------------------------------------


def test_sighup_is_logged_and_ignored(tmp_path):
    proc = exporter(state_dir=str(tmp_path)).start()
    try:
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for(lambda: log_lines(proc, "SIGHUP"), 10, "the SIGHUP line")
        time.sleep(0.5)
        assert proc.proc.poll() is None and proc.get("/-/healthy") == "OK\n"
        assert len(log_lines(proc, "SIGHUP")) == 1
    finally:
        assert proc.stop() == 0
