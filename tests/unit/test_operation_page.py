"""The operation page rendered from hand-built traces and verdicts (pure), and its routes in
the WSGI app: the figures it derives, the verdict in words, escaping, a missing trace."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.parse

import pytest
from libvirt_snapshot_exporter.model.operation import PACE_SETTERS, FinishedOperation, Verdict
from libvirt_snapshot_exporter.model.trace import Point, Trace
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict import explain
from libvirt_snapshot_exporter.verdict.judge import judge, reference
from libvirt_snapshot_exporter.web import api as web_api
from libvirt_snapshot_exporter.web import operation_page as page
from libvirt_snapshot_exporter.web import routes as web
from lse_devtools.handbuilt_trace import history, slow_create, slow_trace

MIB = 2**20
HOSTILE = '</script><script>alert(1)</script><img src=x onerror=alert(2)>&amp;"\''


def verdict(pace: str, model: str | None = "written", **figures: float) -> Verdict:
    shares = {"storage-slow": 0.9, "cpu": 0.02}
    return Verdict(pace, 10.0, 3.03, shares, (), {
        "samples": 240, "written_bytes": 1.18e9, "reference_rate_bytes_per_second": 120e6,
        "writer_device_share": 0.2, "writer_throttled_share": 0.75, "device_utilisation": 0.96,
        **figures}, model)


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
    assert by_title["host memory"] == {"MemFree": [67.1, 33.6, None, None]}  # MB, as MB/s
    assert by_title["writes"] == {"device (vda)": [None, None, 40.0, 30.0],
                                  "QEMU": [None, None, 20.0, None]}  # it went back: a new QEMU
    assert by_title["pressure (PSI some)"] == {"io": [None, None, 50.0, None]}
    assert data["missing"] == ["dirty data", "QEMU's writer threads (over the last second)",
                               explain.RUN_DELAY_TITLE]
    assert {c["unit"] for c in data["charts"]} == {"MB", "MB/s", "% of time"}


def test_the_writers_run_delay_is_charted_summed_over_their_roles():
    """The cpu verdict's evidence: the writer roles' run delay, not the vCPUs' nor others'."""
    delays = [{"run_delay_main_ns": 0.0, "run_delay_other_ns": 0.0},
              {"run_delay_main_ns": 0.25e9, "run_delay_worker_ns": 0.0,
               "run_delay_other_ns": 0.5e9},
              {"run_delay_main_ns": 0.5e9, "run_delay_worker_ns": 0.5e9,
               "run_delay_vcpu_ns": 9e9},
              {"run_delay_main_ns": 0.5e9}]  # a worker gone: its total with it, went back
    points = tuple(Point(10 + i / 2, 4, {}, c) for i, c in enumerate(delays))
    trace = Trace("0" * 16, "vm", "s", "create", 10.0, 11.5, 0.125, "", points)
    (chart,) = [c for c in explain.charts(trace)["charts"]
                if c["title"] == explain.RUN_DELAY_TITLE]
    # 0.25 s of delay in 0.5 s: 50 %; then 0.75 s (main and a worker): 150 %, two threads
    assert chart["unit"] == "% of time"
    assert chart["series"] == [{"label": "run delay", "values": [None, 50.0, 150.0, None]}]


def test_a_revert_s_reads_are_charted_with_its_writes_as_io():
    points = tuple(Point(10 + i, 8, {}, {"qemu_write_bytes": 0.0, "device_write_bytes": 0.0,
                                         "qemu_read_chars": 400e6 * i,
                                         "qemu_read_bytes": 100e6 * i}) for i in range(3))
    trace = Trace("0" * 16, "vm", "s", "revert", 10.0, 12.0, 0.125, "sdb", points)
    data = explain.charts(trace)
    (io,) = [c for c in data["charts"] if c["title"] == "I/O"]
    assert io["unit"] == "MB/s" and {s["label"]: s["values"][-1] for s in io["series"]} == {
        "device (sdb) writes": 0.0, "QEMU writes": 0.0, "QEMU reads": 400.0,
        "QEMU reads from the device": 100.0}
    assert "writes" not in [c["title"] for c in data["charts"]] + data["missing"]
    create = explain.charts(dataclasses.replace(trace, operation="create"))
    assert "I/O" not in [c["title"] for c in create["charts"]]  # its reads are near zero


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
        "Storage set the pace: QEMU's writers waited on I/O in 95 % of their samples (on the "
        "device 25 %, throttled by the dirty limits 70 %), the device busy 96 % of the time "
        "(writing 39 MB/s); 1.18 GB written at 39 MB/s against 120 MB/s usual, 3.0x slower "
        "than expected (10.0 s).")
    throttled, low_free = explain.present_sentences(found, op, trace)
    assert throttled.startswith("Dirty limits throttled the writers 70 % of the time, but did "
                                "not set the pace")
    assert re.fullmatch(r"MemFree fell to \d+ MB while MemAvailable stayed at 3\.\d\d GB or "
                        r"more: .* it did not set the pace\.", low_free)
    # on a storage told apart, the words name it
    on_vda = dataclasses.replace(op, storage="vda")
    assert "against 120 MB/s usual on vda, 3.0x" in explain.pace_sentence(found, on_vda)


@pytest.mark.parametrize(("pace", "figures", "words"), [
    ("size", {}, "At its storage's usual pace: 1.18 GB written at 39 MB/s against 120 MB/s "
                 "usual, 3.0x slower"),
    ("storage-slow", {}, "Storage set the pace: QEMU's writers waited on I/O in 95 % of their "
                         "samples (on the device 20 %, throttled by the dirty limits 75 %), the "
                         "device busy 96 % of the time; 1.18 GB written"),
    # a throttle above the device: the writers wait all the time on a device that idles
    ("storage-slow", {"writer_device_share": 0.98, "writer_throttled_share": 0.0,
                      "device_utilisation": 0.04, "device_write_rate_bytes_per_second": 20e6},
     "Storage set the pace: QEMU's writers waited on I/O in 98 % of their samples, yet the "
     "device was busy only 4 % of the time (writing 20 MB/s): the requests waited above it, "
     "in a throttle or QoS; 1.18 GB"),
    # neither idle nor saturated: the utilisation adds nothing, so it is not said
    ("storage-slow", {"device_utilisation": 0.6},
     "Storage set the pace: QEMU's writers waited on I/O in 95 % of their samples (on the "
     "device 20 %, throttled by the dirty limits 75 %); 1.18 GB"),
    ("storage-contended", {"other_writers_share": 0.5},
     "Storage contended by other writers set the pace: they wrote 50 % of the device's bytes, "
     "and QEMU's writers waited on I/O in 95 %"),
    ("cpu", {"run_delay_share": 0.4},
     "CPU starvation set the pace: QEMU's writers were runnable but not running 40 % of the"),
    ("qemu-cpu", {"writer_running_share": 0.88, "run_delay_share": 0.14},
     "QEMU's own CPU work set the pace: its writer threads were running 88 % of their samples "
     "(waiting for a CPU only 14 %): the work itself"),
    ("cache-mode", {}, "The disk cache mode set the pace: with cache=writeback QEMU's writes"),
    ("qcow2-metadata", {"write_amplification": 4.4},
     "qcow2 metadata set the pace: QEMU wrote 4.4x the guest's memory, more than a vmstate can "
     "be, so each write also allocated qcow2 clusters, with QEMU's writers working on the CPU"),
    ("mixed", {}, "No single cause set the pace: slow storage (90 % of the time beyond the "
                  "expected) and CPU starvation (2 %) are within 1.5x"),
    ("too-short", {"samples": 3}, "Too short to judge: 3 samples within the operation, fewer "
                                  "than the 5 that tell where its time went; 1.18 GB written"),
    ("unknown", {}, "Unknown: no cause explains 20 % of the time beyond the expected or more; "
                    "1.18 GB written at 39 MB/s"),
    ("unknown", {"samples": 3}, "Unknown: the trace has 3 samples within the operation, fewer "
                                "than the 5 a verdict needs."),  # logged before too-short
])
def test_each_pace_setter_in_words(pace, figures, words):
    assert explain.pace_sentence(verdict(pace, **figures), record()).startswith(words)


def test_every_pace_setter_has_a_name_on_the_page():
    assert set(explain.CAUSES) == set(PACE_SETTERS)
    assert explain.CAUSES["qemu-cpu"] == "QEMU's own CPU work"
    assert explain.CAUSES["too-short"] == "too short to judge"


def test_a_verdict_logged_before_models_is_said_as_a_written_one():
    assert explain.pace_sentence(verdict("storage-slow", model=None), record()) == \
        explain.pace_sentence(verdict("storage-slow"), record())


def test_a_read_verdict_says_what_qemu_read_not_what_it_wrote():
    read = Verdict("size", 1.2, 1.02, {}, (), {
        "samples": 10, "read_bytes": 1.2e9, "read_from_device_bytes": 0.3e9,
        "read_rate_bytes_per_second": 1e9, "reference_rate_bytes_per_second": 1.1e9}, "read")
    revert = record(operation="revert", qemu_written_bytes=0, duration_seconds=1.2,
                    storage="/var/lib/libvirt/images")
    assert explain.pace_sentence(read, revert) == (
        "At its storage's usual pace: 1.20 GB read (300 MB from the device) at 1,000 MB/s "
        "against 1,100 MB/s usual on /var/lib/libvirt/images, 1.0x the expected duration "
        "(1.2 s).")


def test_a_duration_verdict_says_the_usual_duration_of_such_operations():
    slow = Verdict("qcow2-metadata", 0.1, 8.0, {"qcow2-metadata": 0.9, "cpu": 0.05}, (),
                   {"samples": 6, "reference_seconds": 0.1}, "duration")
    delete = record(operation="delete", duration_seconds=0.8, storage="sdb")
    assert explain.pace_sentence(slow, delete) == (
        "qcow2 metadata set the pace: a delete is metadata work (refcounts, discards), with "
        "QEMU's writers working on the CPU 90 % of the time beyond the expected; 0.8 s against "
        "0.1 s usual for such operations on sdb, 8.0x slower than expected.")


@pytest.mark.parametrize(("fields", "model", "missing"), [
    ({"storage": "vda"}, "written",
     "no successful internal create with memory that wrote 67 MB or more is logged on vda to "
     "learn its usual rate from"),
    ({"operation": "revert", "storage": "network:rbd"}, "read",
     "no successful internal revert with memory that read 67 MB or more is logged on "
     "network:rbd to learn its usual rate from"),
    ({"operation": "delete", "memory": False, "storage": "sdb"}, "duration",
     "no successful internal delete of a disk-only snapshot is logged on sdb to learn its "
     "usual duration from"),
    ({"operation": "create", "kind": "external", "memory": False}, "duration",
     "no successful external create without memory is logged on the same storage to learn its "
     "usual duration from"),
])
def test_with_no_reference_yet_each_model_says_what_is_missing(fields, model, missing):
    blind = Verdict("size", None, None, {}, (), {"samples": 40, "read_bytes": 5e8}, model)
    assert explain.pace_sentence(blind, record(**fields)) == (
        "Size set the pace: nothing held QEMU's writers back, so its own work did; no expected "
        f"duration yet: {missing}.")


def test_a_judged_revert_is_weighed_by_what_qemu_read():
    """The judge's own figures, in words: a revert reading 800 MB in 2 s where reverts read
    800 MB/s, its writer running all along (it wrote nothing: no '0 MB at 0 MB/s')."""
    start = 1_800_000_000.0
    points = tuple(Point(start + i / 8, 1, {}, {
        "qemu_read_chars": 400e6 * i / 8, "qemu_read_bytes": 100e6 * i / 8,
        "qemu_write_bytes": 0.0, "run_delay_main_ns": 0.0}, {"main:R:": 1})
        for i in range(17))
    trace = Trace("0" * 16, "vm1", "s1", "revert", start, start + 2.0, 0.125, "sdb", points,
                  "sdb")
    revert = FinishedOperation("vm1", "revert", "internal", True, start, start + 2.0, 2.0,
                               "success", snapshot="s1", storage="sdb", qemu_written_bytes=0)
    past = [dataclasses.replace(revert, start=start - 60 * k, end=start - 60 * k + 1.0,
                                duration_seconds=1.0, verdict=Verdict(
                                    "size", 1.0, 1.0, {}, (), {"read_bytes": 800e6}, "read"))
            for k in (1, 2)]
    found = judge(trace, revert, reference(past, revert))
    assert found.model == "read" and found.pace_setter == "qemu-cpu"
    assert explain.pace_sentence(found, revert) == (
        "QEMU's own CPU work set the pace: its writer threads were running 100 % of their "
        "samples (waiting for a CPU only 0 %): the work itself, neither the storage nor a "
        "shortage of CPU; 800 MB read (200 MB from the device) at 400 MB/s against 800 MB/s "
        "usual on sdb, 1.7x slower than expected (1.2 s).")


def test_a_judged_short_delete_is_too_short_against_the_usual_duration():
    start = 1_800_000_000.0
    points = tuple(Point(start + i / 8, 1, {}, {}, {"main:S:do_sys_poll": 1}) for i in range(3))
    trace = Trace("0" * 16, "vm1", "s1", "delete", start, start + 0.3, 0.125, "sdb", points,
                  "sdb")
    delete = FinishedOperation("vm1", "delete", "internal", True, start, start + 0.3, 0.3,
                               "success", snapshot="s1", storage="sdb")
    past = [dataclasses.replace(delete, duration_seconds=0.05)] * 3
    found = judge(trace, delete, reference(past, delete))
    assert found.model == "duration" and found.pace_setter == "too-short"
    assert explain.pace_sentence(found, delete) == (
        "Too short to judge: 3 samples within the operation, fewer than the 5 that tell where "
        "its time went; 0.3 s against 0.05 s usual for such operations on sdb, 6.0x slower "
        "than expected.")


def test_without_a_learned_rate_the_words_say_why_there_is_no_expectation():
    blind = dataclasses.replace(verdict("size"), expected_seconds=None, slowdown=None)
    assert explain.pace_sentence(blind, record()) == (
        "Size set the pace: nothing held QEMU's writers back, so its own work did; no expected "
        "duration yet: no successful internal create with memory that wrote 67 MB or more is "
        "logged on the same storage to learn its usual rate from.")


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
    assert logged[4].startswith("MemFree fell to 210 MB while MemAvailable stayed at 3.67 GB")
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


def test_the_page_says_bytes_in_the_charts_unit_family():
    text = page.render(record(storage="vda"), slow_trace(), verdict("storage-slow"))
    assert "<th>QEMU wrote</th><td>1.18 GB</td>" in text and "<th>storage</th><td>vda</td>" in text
    assert "MiB" not in text and "GiB" not in text


def test_a_failed_operation_shows_its_error_where_the_verdict_would_be():
    failed = record(outcome="failure", error="internal error: unable to save: No space left")
    text = page.render(failed, slow_trace(), None)
    assert ('<section class="verdict failed"><p class=pace>Failed: internal error: unable to '
            "save: No space left</p>") in text
    assert "set the pace" not in text and "<h2>Verdict" not in text
    # a verdict logged before failed operations went unjudged is not shown as a pace either
    judged = page.render(failed, None, verdict("storage-slow"))
    assert "Failed: internal error" in judged and "set the pace" not in judged
    assert "there is no verdict" not in judged  # it failed: that is why
    assert "<p class=pace>Failed</p>" in page.render(record(outcome="failure"), None, None)


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
    assert explain.pace_sentence(logged, record()) == (
        "Storage set the pace: QEMU's writers waited on I/O in 0 % of their samples; 1.18 GB "
        "written at 39 MB/s, 3.0x slower than expected (10.0 s).")  # no reference: not said


def test_the_start_and_end_have_their_zone(monkeypatch):
    """The hypervisor in Paris: an hour ahead of UTC in December."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        facts = dict(page.facts(record()))
        assert page.when(record().start) == "2026-12-01 13:30:30 +01:00"
    finally:
        monkeypatch.undo()
        time.tzset()
    assert facts["start"] == "2026-12-01 13:30:30.772 +01:00 (seen by control)"
    assert facts["end"] == "2026-12-01 13:31:01.072 +01:00 (seen by event)"


def test_the_short_verdict_of_the_landing_page_and_bench():
    assert verdict("storage-slow").short().startswith("storage-slow, ")
    assert dataclasses.replace(verdict("storage-slow"), slowdown=3.02).short() == "storage-slow, 3.0x"
    assert dataclasses.replace(verdict("unknown"), slowdown=None).short() == "unknown"


# --- routes -----------------------------------------------------------------------------------


def call(app: web.App, path: str, query: str = "") -> tuple[str, dict[str, str], bytes]:
    answer: list = []
    body = b"".join(app({"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"},
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
    # relative to /operations/<id>, as every link of the pages (web.external-url's path)
    urls = re.findall(r'(?:src|href)="\.\./(static/[^"]+)"', body.decode())
    assert len(urls) == 3
    for url in urls:
        name = "/" + url.split("?")[0]
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
    links = re.findall(r'<a href="operations/([0-9a-f]{16})">', body.decode())
    assert len(links) == 4 and links[0] == slow_trace().id
    assert all(call(app, f"/operations/{i}")[0] == "200 OK" for i in links)
    assert re.search(rb"<th[^>]*>verdict</th>", body)


def test_the_page_links_its_domain_s_operations():
    html = page.render(record(domain=HOSTILE), None, None)
    assert '<a href="../">&larr; all operations</a>' in html
    link = re.search(r'<a href="\.\./\?domain=([^"]*)">(.*?)\'s operations</a>', html)
    assert not set("<>&\"' ") & set(link[1])  # all percent-encoded
    assert urllib.parse.parse_qs("domain=" + link[1])["domain"] == [HOSTILE]
    assert link[2].startswith("&lt;/script&gt;")


def test_the_landing_page_filters_by_domain_over_the_whole_log(tmp_path):
    """Server side (no JavaScript needed), over every logged operation, not the 100 newest."""
    oplog = OperationsLog(str(tmp_path))
    oplog.add(record(domain=HOSTILE))
    for op in history() * 40:
        oplog.add(op)
    store = StateStore(View(True, "qemu:///system", "hv1", "6.1", None, None, {}, (), {}, 0, {},
                            True, 0))
    app = web.App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics")
    status, _, body = call(app, "/", "domain=" + urllib.parse.quote(HOSTILE))
    assert status == "200 OK" and body.count(b'<a href="operations/') == 1
    assert b"the 1 operation of domain <b>&lt;/script&gt;&lt;script&gt;alert(1)" in body
    assert b"alert(1)</script>" not in body and b"<img" not in body
    _, _, body = call(app, "/", "domain=")  # the menu's "all domains"
    assert body.count(b'<a href="operations/') == 100 and b"the 100 newest of 121" in body
    _, _, body = call(app, "/", "domain=vm1")
    assert b"the 100 newest of the 120 operations of domain <b>vm1</b>" in body


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


def test_the_page_is_rendered_once_until_its_entry_or_its_trace_changes(app, monkeypatch):
    monkeypatch.setattr(web_api, "TRACE_RECHECK_SECONDS", 1e9)  # one period until said
    renders = []
    render = page.render
    monkeypatch.setattr(page, "render", lambda *args: renders.append(args) or render(*args))
    path = f"/operations/{slow_trace().id}"
    first = call(app, path)
    assert all(call(app, path) == first for _ in range(20)) and len(renders) == 1
    app.oplog.add(history()[0])  # another operation logged: this page is as it was
    assert call(app, path) == first and len(renders) == 1
    judged = dataclasses.replace(slow_create(), verdict=verdict("storage-slow"))
    assert app.oplog.amend(judged)  # its verdict came
    assert b"Storage set the pace" in call(app, path)[2] and len(renders) == 2
    app.api.traces = TraceStore(str(app.oplog.directory / "elsewhere"), 5, 2**24)  # trace gone
    assert b"Storage set the pace" in call(app, path)[2] and len(renders) == 2  # read < 1 s ago
    monkeypatch.setattr(web_api, "TRACE_RECHECK_SECONDS", 1e-9)  # the next period
    assert b"No trace is kept" in call(app, path)[2] and len(renders) == 3
    assert call(app, "/operations/" + "0" * 16)[0] == "404 Not Found" and len(renders) == 3


def test_a_trace_without_points_is_said_not_charted():
    """The flight recorder keeps the trace of an operation under way when the exporter stops,
    possibly with no point yet: its page says so (it answered 500)."""
    empty = dataclasses.replace(slow_trace(), points=())
    html = page.render(slow_create(), empty, None)
    assert "Its trace has no points" in html and "trace-data" not in html


def test_an_openstack_instance_s_name_is_beside_its_domain():
    """Kept in the log entry, it names the page and is one of its facts; escaped. An entry
    without one (not an OpenStack domain, or logged before names were) has neither."""
    text = page.render(record(domain="instance-0000002a", instance_name="web-1"), None, None)
    assert "<h1>create of instance-0000002a (web-1) / s1</h1>" in text
    assert "<tr><th>domain</th><td>instance-0000002a</td></tr>" \
           "<tr><th>OpenStack instance</th><td>web-1</td></tr>" in text
    assert "OpenStack" not in page.render(record(), None, None)
    hostile = page.render(record(instance_name=HOSTILE), None, None)
    assert "alert(1)</script>" not in hostile and "<img" not in hostile
