"""The pages in a real headless Chromium (Debian's `chromium`, installed by `make test-deps`),
served by the WSGI app on a loopback port. The operation page with a stored trace: its uPlot
charts must be drawn, the verdict be there, hostile names stay text, and the start and end
labels never overlap, even on an operation of a few milliseconds. The landing page at 1,400 px:
the verdict and the guest's pause on screen without scrolling, its table updated by
landing-page.js, its domain filter. Fails, never skips, without Chromium.

LSE_LANDING_SCREENSHOT and LSE_SHORT_PAGE_SCREENSHOT name files to write the landing page's
and a short operation's page to, to look at them (docs/landing-page.png is the former)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest
from libvirt_snapshot_exporter.model.observations import Versions
from libvirt_snapshot_exporter.model.operation import (
    FinishedOperation,
    InFlight,
    OperationFacts,
    Verdict,
)
from libvirt_snapshot_exporter.sources.host import HostReader
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict.keeper import VerdictKeeper
from libvirt_snapshot_exporter.verdict.recorder import POST_SECONDS, FlightRecorder
from libvirt_snapshot_exporter.web import routes as web
from libvirt_snapshot_exporter.web import server as http_server
from lse_devtools.handbuilt_trace import START, history, slow_create, slow_trace
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
    assert landing.count('href="operations/') == 5


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


# --- probes: a script the test adds to a page, which leaves what it measured in the DOM -------

# Before operation-page.js: every "start" and "end" label the charts draw, as its box on the
# canvas (the page's own fillText, wrapped).
LABEL_PROBE = """(() => {
  const boxes = [];
  const fillText = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, x, y, ...rest) {
    if (text === "start" || text === "end") {
      const width = this.measureText(text).width;
      const left = this.textAlign === "right" ? x - width : x;
      boxes.push({text: text, left: left, right: left + width, top: y,
                  bottom: y + parseFloat(this.font), canvas: this.canvas.width});
      document.body.dataset.labels = JSON.stringify(boxes);
    }
    return fillText.call(this, text, x, y, ...rest);
  };
})();"""

# Before landing-page.js, once the page is laid out: the right edge of each header cell and of
# the first row's cells, and the width of the window.
LANDING_PROBE = """addEventListener("load", () => {
  const right = (cell) => Math.round(cell.getBoundingClientRect().right);
  const heads = [...document.querySelectorAll("#operations th")];
  const first = [...document.querySelectorAll("#operations tr:nth-child(2) td")];
  document.body.dataset.probe = JSON.stringify({
    inner: innerWidth, client: document.documentElement.clientWidth,
    heads: Object.fromEntries(heads.map((th) => [th.textContent, right(th)])),
    first: first.map(right)});
});"""


class Probed:
    """The app, its HTML pages with `probe` run before their first script file; with `stale`,
    the first landing page it serves says it was rendered before the log changed, as when an
    operation ends while the page is open."""

    def __init__(self, app: web.App, probe: str, stale: bool = False) -> None:
        self.app, self.probe, self.stale = app, probe, stale
        self.pages = 0

    def __call__(self, environ: dict, start_response):
        answer: list = []
        body = b"".join(self.app(environ, lambda s, h, _e=None: answer.extend([s, h])))
        status, headers = answer
        if dict(headers)["Content-Type"].startswith("text/html"):
            text = body.decode()
            if environ["PATH_INFO"] == "/":
                self.pages += 1
                if self.stale and self.pages == 1:
                    text = re.sub(r'data-signature="[^"]*"', 'data-signature="stale"', text)
            body = text.replace("<script src=", f"<script>{self.probe}</script>\n<script src=",
                                1).encode()
            headers = [(k, str(len(body)) if k == "Content-Length" else v) for k, v in headers]
        start_response(status, headers)
        return [body]


def probed(dom: str, name: str):
    found = re.search(rf'data-{name}="([^"]*)"', dom)
    assert found, dom[:3000]
    return json.loads(found[1].replace("&quot;", '"').replace("&amp;", "&"))


# --- the operation page of a short operation ---------------------------------------------------


def short_operation(milliseconds: float) -> tuple[FinishedOperation, object]:
    """vm1's create of "short<ms>": the slow trace cut to `milliseconds`, 3 s after it."""
    snapshot = f"short{milliseconds:g}"
    end = START + milliseconds / 1000
    trace = slow_trace("vm1", snapshot)
    trace = dataclasses.replace(trace, end=end,
                                points=tuple(p for p in trace.points if p.t <= end + 3))
    op = FinishedOperation("vm1", "create", "internal", True, START, end, end - START,
                           "success", snapshot=snapshot, qemu_written_bytes=1_000_000)
    assert op.id == trace.id
    return op, trace


@pytest.mark.parametrize("milliseconds", [5, 60, 400, 30_300])
def test_the_start_and_end_labels_never_overlap(tmp_path, milliseconds):
    """"stdt" before: both labels were drawn right of their lines, on the same line."""
    oplog = OperationsLog(str(tmp_path))
    traces = TraceStore(str(tmp_path), 5, 2**24)
    op, trace = short_operation(milliseconds)
    oplog.add(op)
    traces.add(trace)
    app = web.App(view(), oplog, lambda *_: (b"", "text/plain"), "/metrics", traces)
    with serve(Probed(app, LABEL_PROBE)) as url:
        dom = chromium("--dump-dom", "--window-size=1280,900", f"{url}/operations/{op.id}")
        if (shot := os.environ.get("LSE_SHORT_PAGE_SCREENSHOT")) and milliseconds == 60:
            chromium(f"--screenshot={shot}", "--window-size=1280,1400", "--hide-scrollbars",
                     f"{url}/operations/{op.id}")
    assert 'data-state="drawn"' in dom
    boxes = probed(dom, "labels")
    assert len(boxes) >= 12 and [b["text"] for b in boxes[:2]] == ["start", "end"]
    for start, end in zip(boxes[::2], boxes[1::2], strict=True):
        assert (start["text"], end["text"]) == ("start", "end")
        apart = (start["right"] <= end["left"] or end["right"] <= start["left"]
                 or start["bottom"] <= end["top"] or end["bottom"] <= start["top"])
        assert apart, (start, end)
        assert all(b["left"] >= 0 and b["right"] <= b["canvas"] for b in (start, end))
    if milliseconds == 30_300:  # room enough: both inside the span, on one line, as before
        assert boxes[0]["top"] == boxes[1]["top"] and boxes[0]["left"] < boxes[1]["left"]


# --- the landing page at 1,400 px --------------------------------------------------------------


def hypervisor_log(now: float) -> list[FinishedOperation]:
    """A day of a hypervisor's operations, newest last: what docs/landing-page.png shows."""
    mb = 1_000_000
    gb = 1000 * mb

    def op(minutes: float, domain: str, snapshot: str, operation: str, seconds: float,
           paused: float, verdict: Verdict | None, **fields: object) -> FinishedOperation:
        end = now - minutes * 60
        figures = {"depth": 3, "qemu_version": "7.2.0", "disk_cache": ("none",),
                   "guest_memory_used_bytes": 3.1 * gb, "guest_cpu_ratio": 0.18,
                   "host_memory_available_start_bytes": 41 * gb,
                   "host_memory_available_min_bytes": 37 * gb,
                   "host_memory_free_min_bytes": 2.2 * gb, "host_dirty_peak_bytes": 610 * mb,
                   "host_writeback_peak_bytes": 95 * mb, "qemu_written_bytes": 3.4 * gb,
                   **fields}
        figures = {k: int(v) if k.endswith("_bytes") else v for k, v in figures.items()}
        return FinishedOperation(domain, operation, "internal", operation != "delete",
                                 end - seconds, end, seconds, "success", snapshot=snapshot,
                                 paused_seconds=paused, verdict=verdict, **figures)

    def judged(pace: str, slowdown: float) -> Verdict:
        return Verdict(pace, 10.0, slowdown, {}, (), {})

    return [
        op(400, "web01", "pre-upgrade", "create", 31.2, 31.2, judged("size", 1.0)),
        op(350, "web02", "pre-upgrade", "create", 29.8, 29.8, judged("size", 1.0)),
        op(300, "db-primary", "nightly-2027-01-14", "create", 1834.6, 1834.6,
           judged("storage-slow", 58.3), qemu_written_bytes=3.9 * gb,
           host_memory_free_min_bytes=180 * mb, host_dirty_peak_bytes=4.1 * gb),
        op(240, "build-runner-3", "clean", "revert", 12.4, 12.4, judged("size", 1.1)),
        op(180, "web01", "pre-upgrade", "delete", 0.41, 0.0, None, qemu_written_bytes=2 * mb),
        dataclasses.replace(
            op(120, "db-replica", "nightly-2027-01-15", "create", 212.0, 212.0, None),
            outcome="failure", error="internal error: unable to execute QEMU command 'savevm': "
                                     "Error while writing VM state: No space left on device"),
        op(90, "build-runner-3", "ci-4711", "create", 95.1, 95.1,
           judged("storage-contended", 2.8)),
        op(60, "web02", "hotfix", "create", 44.0, 44.0, judged("cpu", 1.4),
           guest_cpu_ratio=0.97),
        op(30, "web01", "hotfix", "create", 38.7, 38.7, judged("cache-mode", 1.2),
           disk_cache=("writeback",)),
        op(8, "db-primary", "before-migration", "create", 47.3, 47.3,
           judged("qemu-cpu", 1.6)),
    ]


def hypervisor(tmp: str, now: float) -> web.App:
    oplog = OperationsLog(tmp)
    for record in hypervisor_log(now):
        oplog.add(record)
    running = InFlight("7e3f0c9a51d2b684", OperationFacts(
        "db-primary", "create", now - 12.3, "control", 0.005, snapshot="nightly-2027-01-15",
        memory=True, depth=4), {"guest_memory_used_bytes": 6_200_000_000,
                                "guest_cpu_ratio": 0.41})
    store = StateStore(dataclasses.replace(
        view().view, hostname="hv01.example.org", in_flight=(running,),
        versions=Versions("9.0.0", "9.0.0", "7.2.0", 9_000_000)))
    return web.App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics",
                   TraceStore(tmp, 5, 2**24))


def test_the_landing_page_shows_verdict_and_pause_at_1400_px(tmp_path):
    """Laid out at 1,400 px, the headers and the first row's cells of the verdict and the
    guest's pause end inside the window, with no horizontal scrolling to reach them."""
    with serve(Probed(hypervisor(str(tmp_path), time.time()), LANDING_PROBE)) as url:
        dom = chromium("--dump-dom", "--window-size=1400,900", url + "/")
        if shot := os.environ.get("LSE_LANDING_SCREENSHOT"):
            chromium(f"--screenshot={shot}", "--window-size=1400,900", url + "/")
    probe = probed(dom, "probe")
    assert probe["inner"] == 1400, probe
    heads = probe["heads"]
    assert list(heads)[:5] == ["domain", "snapshot", "operation", "verdict", "guest paused"]
    for title in ("domain", "snapshot", "operation", "verdict", "guest paused", "duration",
                  "outcome"):
        assert heads[title] <= probe["client"] <= 1400, (title, heads)
    assert max(probe["first"][:5]) <= probe["client"], probe["first"]
    assert heads["QEMU wrote"] > 1400  # the rest of the study's columns: further right
    assert "running 1" in dom and dom.count("<tr class=\"failed\">") == 1
    assert "✗ failed" in dom and "This page updates itself" in dom


def test_the_landing_page_updates_its_table_when_the_log_changes(tmp_path):
    """Served once with a stale signature (the log changed after it was rendered), the page
    fetches itself again and replaces its table, once: its own signature then matches what
    landing-page.js computes from /api/operations, at each later check. The running
    operation's time ticks meanwhile."""
    app = Probed(hypervisor(str(tmp_path), time.time()), "", stale=True)
    with serve(app) as url:
        dom = chromium("--dump-dom", "--window-size=1400,900", "--virtual-time-budget=7000",
                       url + "/?domain=db-primary")
    live = re.search(r'<div id="live"[^>]*>', dom)[0]
    assert 'data-updates="1"' in live and 'data-signature="stale"' not in live, live
    assert app.pages == 2  # the first answer, and the one fetch that replaced its table
    assert re.search(r'<span id="checked" data-state="ok">Last checked at \d\d:\d\d:\d\d', dom)
    rows = re.findall(r"<tr[^>]*>.*?</tr>", dom[dom.index('<table id="operations">'):])
    assert len(rows) == 1 + 3 and all("db-primary" in r for r in rows[1:])  # still filtered
    cell = re.search(r'data-elapsed="([\d.]+)">running ([\d.]+) s<', rows[1])
    assert float(cell[2]) >= float(cell[1]) + 2, cell[0]  # ticked


def test_the_landing_page_s_domain_filter_keeps_hostile_names_text(base):
    dom = chromium("--dump-dom", base + "/?domain=" + urllib.parse.quote(HOSTILE_DOMAIN))
    assert "pwned" not in dom.split("</title>")[0] and "data-pwned" not in dom
    selected = re.search(r"<option [^>]*selected[^>]*>(.*?)</option>", dom)
    assert selected and selected[1] == "&lt;/script&gt;&lt;script&gt;document.title=\"pwned\"" \
        "&lt;/script&gt;", selected
    assert dom.count('href="operations/') == 1  # its one operation, of the five
    assert "the 1 operation of domain" in dom
