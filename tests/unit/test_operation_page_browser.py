"""The operation page in a real headless Chromium (Debian's `chromium`, installed by `make
test-deps`): served by the WSGI app on a loopback port with a stored trace, its uPlot charts
must be drawn, the verdict be there, and hostile names stay text. Fails, never skips, without
Chromium."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
from libvirt_snapshot_exporter.model.operation import FinishedOperation
from libvirt_snapshot_exporter.sources.host import HostReader
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict.keeper import VerdictKeeper
from libvirt_snapshot_exporter.verdict.recorder import POST_SECONDS, FlightRecorder
from libvirt_snapshot_exporter.web import routes as web
from libvirt_snapshot_exporter.web import server as http_server
from lse_devtools.handbuilt_trace import history, slow_create, slow_trace
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HOSTILE_DOMAIN = '</script><script>document.title="pwned"</script>'
HOSTILE_SNAPSHOT = '<img src=x onerror="document.body.dataset.pwned=1">'
FIRST_BLUE = (0x1F, 0x77, 0xB4)  # the first series' stroke in operation-page.js


@contextlib.contextmanager
def serve(app: web.App) -> Iterator[str]:
    server = http_server.serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{server.address_text}"
    server.shutdown()
    server.server_close()


def view() -> StateStore:
    return StateStore(View(True, "qemu:///system", "hv1", "6.1", None, None, {}, (), {}, 0, {},
                           True, 0))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Iterator[str]:
    state = str(tmp_path_factory.mktemp("state"))
    oplog = OperationsLog(state)
    traces = TraceStore(state, 10, 2**24)
    for record in history():
        oplog.add(record)
    oplog.add(slow_create())
    traces.add(slow_trace())
    oplog.add(slow_create(HOSTILE_DOMAIN, HOSTILE_SNAPSHOT))
    traces.add(dataclasses.replace(slow_trace(HOSTILE_DOMAIN, HOSTILE_SNAPSHOT),
                                   device=HOSTILE_DOMAIN))
    judge_kept(oplog, traces)
    with serve(web.App(view(), oplog, lambda *_: (b"", "text/plain"), "/metrics", traces)) as url:
        yield url


def judge_kept(oplog: OperationsLog, traces: TraceStore) -> None:
    """As the exporter does once each trace is complete (verdict/keeper.py)."""
    keeper = VerdictKeeper(oplog, StateStore(View.initial("test:///default")), lambda: None)
    keeper.backfill(traces.get)
    keeper.judge_traced()


def chromium(*args: str) -> str:
    assert Path(CHROMIUM).exists(), "no chromium: `make test-deps` installs Debian's"
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args],
            capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def page_url(base: str, domain: str = "vm1", snapshot: str = "s1") -> str:
    return f"{base}/operations/{slow_trace(domain, snapshot).id}"


def test_the_charts_are_drawn_and_the_verdict_is_in_words(base):
    dom = chromium("--dump-dom", page_url(base))
    charts = re.search(r'<div id="charts"[^>]*>', dom)
    assert charts, dom[:2000]
    assert 'data-state="drawn"' in charts[0] and 'data-charts="6"' in charts[0], charts[0]
    assert dom.count('<canvas') == 6  # one per uPlot
    assert ("Storage set the pace: QEMU's writers waited on I/O in 95 % of their samples" in dom
            and "the device busy 96 % of the time" in dom)
    assert "3.0x slower than expected" in dom
    assert "Dirty limits throttled the writers" in dom and "did not set the pace" in dom
    for legend in ("MemFree", "Writeback", "dirty threshold", "device (vda)", "QEMU",
                   "throttled by dirty limits", "run delay"):
        assert f">{legend}<" in dom, legend


def test_the_screenshot_has_the_charts_lines(base, tmp_path):
    """The pixels, not the DOM: the first series' blue lines are drawn. Measured: ~7,300
    such pixels drawn, ~290 (the legends' markers) with every value left out."""
    shot = tmp_path / "page.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1900", "--hide-scrollbars",
             page_url(base))
    pixels = numpy.asarray(Image.open(shot).convert("RGB"), dtype=int)
    blue = int((abs(pixels - FIRST_BLUE).max(axis=2) <= 12).sum())
    assert blue > 3000, blue


def test_hostile_names_stay_text_in_the_browser(base):
    dom = chromium("--dump-dom", page_url(base, HOSTILE_DOMAIN, HOSTILE_SNAPSHOT))
    assert re.search(r"<title>create of &lt;/script&gt;", dom)  # the script never ran
    assert "data-pwned" not in dom and 'data-state="drawn"' in dom
    assert "&lt;/script&gt;&lt;script&gt;document.title" in dom  # shown, as text
    landing = chromium("--dump-dom", base + "/")
    assert "data-pwned" not in landing and "pwned</title>" not in landing
    assert landing.count('href="/operations/') == 5


def test_a_missing_trace_is_said_in_the_browser(base):
    dom = chromium("--dump-dom", f"{base}/operations/{history()[2].id}")
    assert "No trace is kept for this operation" in dom and "<canvas" not in dom


def test_a_trace_the_flight_recorder_took_of_this_process_is_drawn(tmp_path):
    """Not hand-built: the recorder samples this process as the QEMU while it writes 64 MiB
    to a file and syncs it; the page of that trace is drawn like the others."""
    traces = TraceStore(str(tmp_path), 5, 2**24)
    recorder = FlightRecorder("/proc", str(tmp_path), traces)
    recorder.start()
    try:
        host = HostReader("/proc")
        recorder.note_host(host.read())
        start = round(time.time(), 3)
        recorder.begin("vm/1", "vm", start, os.getpid(), [str(tmp_path)])
        with open(tmp_path / "vmstate", "wb") as out:
            for _ in range(64):
                out.write(os.urandom(2**20))
            os.fsync(out.fileno())
        time.sleep(0.5)
        end = round(time.time(), 3)
        op = FinishedOperation("vm", "create", "internal", True, start, end, end - start,
                               "success", snapshot="s1", qemu_written_bytes=64 * 2**20)
        recorder.end("vm/1", op)
        deadline = time.monotonic() + POST_SECONDS + 3
        while op.id not in traces.ids() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        recorder.stop()
    assert op.id in traces.ids()
    oplog = OperationsLog(str(tmp_path))
    oplog.add(op)
    judge_kept(oplog, traces)
    with serve(web.App(view(), oplog, lambda *_: (b"", "text/plain"), "/metrics",
                       traces)) as url:
        dom = chromium("--dump-dom", f"{url}/operations/{op.id}")
        if shot := os.environ.get("LSE_PAGE_SCREENSHOT"):  # to look at it
            chromium(f"--screenshot={shot}", "--window-size=1280,2080", "--hide-scrollbars",
                     f"{url}/operations/{op.id}")
    charts = re.search(r'<div id="charts"[^>]*>', dom)[0]
    drawn = re.search(r'data-charts="(\d)"', charts)
    assert 'data-state="drawn"' in charts and drawn, charts
    # memory, dirty, writes (a create's: its reads are charted for reverts), PSI, threads,
    # run delay
    assert dom.count("<canvas") == int(drawn[1]) == 6
    assert "<h2>Verdict: " in dom and ">MemFree<" in dom and ">QEMU<" in dom
    assert ">QEMU reads<" not in dom and ">run delay<" in dom
