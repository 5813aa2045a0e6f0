"""The operation page rendered from hand-built traces and verdicts (pure), and its routes in
the WSGI app: the figures it derives, the verdict in words, escaping, a missing trace."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from libvirt_snapshot_exporter.model.trace import Point, Trace
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict import explain
from libvirt_snapshot_exporter.verdict.judge import judge, reference
from libvirt_snapshot_exporter.web import operation_page as page
from libvirt_snapshot_exporter.web import routes as web
from lse_devtools.handbuilt_trace import history, slow_create, slow_trace

MIB = 2**20
HOSTILE = '</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;"\''


def verdict(pace: str, **figures: float) -> Verdict:
    shares = {"storage-slow": 0.9, "cpu": 0.02}
    return Verdict(pace, 10.0, 3.03, shares, (), {
        "samples": 240, "written_bytes": 1.18e9, "reference_rate_bytes_per_second": 120e6,
        "writer_device_share": 0.2, "writer_throttled_share": 0.75, "device_utilisation": 0.96,
        **figures})


def record(**fields) -> FinishedOperation:
    return dataclasses.replace(slow_create(), **fields)


def test_rates_and_memory_are_derived_from_the_counters_and_gauges():
    points = (Point(100.0, 1, {"free": 64 * MIB}),  # the ring: no counters yet
              Point(100.5, 1, {"free": 32 * MIB}, {"device_write_bytes": 0.0,
                                                     "qemu_write_bytes": 0.0,
                                                     "psi_io_some": 1.0}),
              Point(101.0, 1, {}, {"device_write_bytes": 20e6, "qemu_write_bytes": 10e6,
                                   "psi_io_some": 1.25}),
              Point(102.0, 2, {}, {"device_write_bytes": 50e6, "qemu_write_bytes": 5e6}))
    trace = Trace("0" * 16, "vm", "s", "create", 100.5, 101.5, 0.125, "vda", points)
    data = explain.charts(trace)
    assert data["x"] == [-0.5, 0.0, 0.5, 1.5] and data["end"] == 1.0
    by_title = {c["title"]: {s["label"]: s["values"] for s in c["series"]}
                for c in data["charts"]}
    assert by_title["host memory"] == {"MemFree": [64.0, 32.0, None, None]}
    assert by_title["writes"] == {"device (vda)": [None, None, 40.0, 30.0],
                                  "QEMU": [None, None, 20.0, None]}  # it went back: a new QEMU
    assert by_title["pressure (PSI some)"] == {"io": [None, None, 50.0, None]}
    assert data["missing"] == ["dirty data", "QEMU's writer threads (over the last second)"]


def test_thread_states_are_shares_of_the_last_second_of_writer_samples():
    points = [Point(10 + i / 8, 1, {}, {}, {"main:D:balance_dirty_pages" if i % 4 else
                                            "main:R:": 1, "vcpu:R:": 1})
              for i in range(16)]
    points.insert(0, Point(9.0, 1, {"free": 1}))  # before the threads are sampled
    trace = Trace("0" * 16, "vm", "s", "create", 10.0, 12.0, 0.125, "", tuple(points))
    (threads,) = [c for c in explain.charts(trace)["charts"] if c["title"].startswith("QEMU's")]
    values = {s["label"]: s["values"] for s in threads["series"]}
    assert values["running"][0] is None and values["running"][1] == 100.0  # one sample: running
    assert values["running"][-1] == 25.0 and values["throttled by dirty limits"][-1] == 75.0
    assert values["reclaiming memory"][-1] == 0.0  # vCPU threads are no writers


def test_the_slow_storage_verdict_in_words():
    trace, op = slow_trace(), slow_create()
    found = judge(trace, op, reference([*history(), op], op))
    assert explain.pace_sentence(found, op) == (
        "Storage set the pace: QEMU's writers waited on a device busy 96 % of the time (in 95 % "
        "of their samples); 1.18 GB at 39 MB/s against 120 MB/s usual: 3.0x slower than "
        "expected (10.0 s).")
    throttled, low_free = explain.present_sentences(found, op, trace)
    assert throttled.startswith("Dirty limits throttled the writers 70 % of the time, but did "
                                "not set the pace")
    assert re.fullmatch(r"MemFree fell to \d+ MiB while MemAvailable stayed at 3,\d{3} MiB or "
                        r"more: .* it did not set the pace\.", low_free)


@pytest.mark.parametrize(("pace", "figures", "words"), [
    ("size", {}, "Size set the pace: the operation took as long as its bytes take"),
    ("storage-contended", {"other_writers_share": 0.5},
     "Storage contended by other writers set the pace: they wrote 50 % of the device's bytes"),
    ("cpu", {"run_delay_share": 0.4},
     "CPU starvation set the pace: QEMU's writers were runnable but not running 40 % of the"),
    ("cache-mode", {}, "The disk cache mode set the pace: with cache=writeback QEMU's writes"),
    ("mixed", {}, "No single cause set the pace: slow storage (90 % of the time) and CPU "
                  "starvation (2 %) are within 1.5x"),
    ("unknown", {}, "Unknown: no cause explains 20 % of the time or more; 1.18 GB at 39 MB/s"),
    ("unknown", {"samples": 3}, "Unknown: the trace has 3 samples within the operation, fewer "
                                "than the 5 a verdict needs."),
])
def test_each_pace_setter_in_words(pace, figures, words):
    assert explain.pace_sentence(verdict(pace, **figures), record()).startswith(words)


def test_without_a_learned_rate_the_words_say_why_there_is_no_expectation():
    blind = dataclasses.replace(verdict("size"), expected_seconds=None, slowdown=None)
    assert explain.pace_sentence(blind, record()) == (
        "Size set the pace: nothing held QEMU's writers back, so its own bytes did; no expected "
        "duration yet: this host has logged no successful internal create with memory that "
        "wrote 64 MiB or more to learn its storage's rate from.")


def test_each_condition_present_is_said_not_to_set_the_pace():
    trace = slow_trace()
    present = ("dirty-throttling", "direct-reclaim", "kswapd-reclaim", "memory-pressure",
               "low-memfree-ample-memavailable", "something-new")
    said = explain.present_sentences(dataclasses.replace(verdict("size"), present=present),
                                  record(), trace)
    assert len(said) == len(present)
    assert all("did not set the pace" in s for s in said), said
    assert said[3].startswith("Tasks waited on memory 0 % of the time (PSI)")
    logged = explain.present_sentences(dataclasses.replace(verdict("size"), present=present),
                                    record(memory_stall_seconds=15.15,
                                           host_memory_available_min_bytes=3500 * MIB), None)
    assert logged[3].startswith("Tasks waited on memory 50 % of the time (PSI)")
    assert logged[4].startswith("MemFree fell to 200 MiB while MemAvailable stayed at 3,500")
    assert explain.present_sentences(dataclasses.replace(verdict("size"), present=present),
                                  record(host_memory_free_min_bytes=None), None)[4].startswith(
        "MemFree fell low while MemAvailable stayed ample: the page cache")


def test_hostile_text_is_escaped_everywhere_in_the_page():
    op = record(domain=HOSTILE, snapshot=HOSTILE, error=HOSTILE, disk_cache=(HOSTILE,),
                start_source=HOSTILE, qemu_version=HOSTILE)
    trace = dataclasses.replace(slow_trace(), device=HOSTILE)
    text = page.render(op, trace, dataclasses.replace(verdict("cache-mode"),
                                                      present=(HOSTILE,),
                                                      shares={HOSTILE: 0.5}))
    assert "<img" not in text and "alert(1)</script>" not in text
    assert text.count("<script") == 3  # the data and the two scripts of the page
    data = re.search(r'<script type="application/json" id=trace-data>(.*?)</script>', text, re.S)
    assert json.loads(data[1])["charts"][2]["series"][0]["label"] == f"device ({HOSTILE})"
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in text


def test_a_missing_trace_is_a_page_saying_so():
    text = page.render(record(), None, None)
    assert "No trace is kept for this operation" in text and "<script" not in text
    assert "<th>domain</th><td>vm1</td>" in text and "there is no verdict" in text
    kept = page.render(record(), None, verdict("storage-slow"))  # the log kept its verdict
    assert "Storage set the pace" in kept and "No trace is kept" in kept
    assert "there is no verdict" not in kept and "<script" not in kept


def test_a_logged_verdict_with_null_figures_is_still_said():
    logged = dataclasses.replace(verdict("storage-slow"), figures={
        "samples": 240, "device_utilisation": None, "writer_device_share": None})
    assert explain.pace_sentence(logged, record()).startswith(
        "Storage set the pace: QEMU's writers waited on the device (in 0 % of their samples)")


def test_the_short_verdict_of_the_landing_page_and_bench():
    assert verdict("storage-slow").short().startswith("storage-slow, ")
    assert dataclasses.replace(verdict("storage-slow"), slowdown=3.02).short() == "storage-slow, 3.0x"
    assert dataclasses.replace(verdict("unknown"), slowdown=None).short() == "unknown"


# --- routes -----------------------------------------------------------------------------------


def call(app: web.App, path: str) -> tuple[str, dict[str, str], bytes]:
    answer: list = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"},
                        lambda s, h, _e=None: answer.extend([s, dict(h)])))
    return answer[0], answer[1], body


@pytest.fixture()
def app(tmp_path) -> web.App:
    oplog = OperationsLog(str(tmp_path))
    traces = TraceStore(str(tmp_path), 5, 2**24)
    for op in [*history(), slow_create()]:
        oplog.add(op)
    traces.add(slow_trace())
    store = StateStore(View(True, "qemu:///system", "hv1", "6.1", None, None, {}, (), {}, 0, {},
                            True, 0))
    return web.App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics", traces)


def test_the_page_route_and_its_static_files(app):
    status, headers, body = call(app, f"/operations/{slow_trace().id}")
    assert status == "200 OK" and headers["Content-Type"] == "text/html; charset=utf-8"
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', body.decode())
    assert len(urls) == 3
    for url in urls:
        name = url.split("?")[0]
        status, headers, static = call(app, name)
        assert status == "200 OK" and static, url
        assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert call(app, "/static/uplot.iife.min.js")[1]["Content-Type"].startswith(
        "text/javascript")
    assert b"The MIT License" in call(app, "/static/LICENSE.uplot")[2]
    assert call(app, "/static/operation-page.js")[2].startswith(b"// The operation page")


@pytest.mark.parametrize("path", [
    "/operations/0000000000000000", "/operations/" + slow_trace().id + "/",
    "/operations/../api/operations", "/static/", "/static/operation_page.py", "/static/../operation_page.py",
    "/static/%2e%2e/web.py", "/static/.", "/static/__init__.py",
])
def test_other_paths_are_404(app, path):
    assert call(app, path)[0] == "404 Not Found", path


def test_the_landing_page_links_each_finished_operation(app):
    _, _, body = call(app, "/")
    links = re.findall(r'<a href="/operations/([0-9a-f]{16})">', body.decode())
    assert len(links) == 4 and links[0] == slow_trace().id
    assert all(call(app, f"/operations/{i}")[0] == "200 OK" for i in links)
    assert b"<th>verdict</th>" in body


def test_the_logged_verdict_is_on_the_landing_page_and_the_page_without_its_trace(tmp_path):
    oplog = OperationsLog(str(tmp_path))
    oplog.add(record(verdict=verdict("storage-slow")))
    store = StateStore(View(True, "qemu:///system", "hv1", "6.1", None, None, {}, (), {}, 0, {},
                            True, 0))
    app = web.App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics",
                  TraceStore(str(tmp_path), 5, 2**24))  # the trace evicted
    assert b"<td>storage-slow, 3.0x</td>" in call(app, "/")[2]
    status, _, body = call(app, f"/operations/{slow_trace().id}")
    assert status == "200 OK" and b"Storage set the pace" in body and b"No trace is kept" in body
    assert call(app, f"/api/operations/{slow_trace().id}/verdict")[0] == "404 Not Found"
