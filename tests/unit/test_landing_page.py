"""The landing page, rendered without HTTP: operations in flight on top, each finished one
linking to its page with its verdict, the newest only with a pointer to the rest, and every
name from libvirt or the log escaped."""

from __future__ import annotations

import dataclasses
import re
import time

from libvirt_snapshot_exporter.model.observations import Versions
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from libvirt_snapshot_exporter.store.view import View
from libvirt_snapshot_exporter.web import landing_page

HOSTILE = '<script>alert(1)</script>&"\''
START = 1_800_000_000.0


def view(**fields: object) -> View:
    return dataclasses.replace(View.initial("qemu:///system"), **fields)


def finished(snapshot: str = "s1", **fields: object) -> FinishedOperation:
    return FinishedOperation("vm1", "create", "internal", True, START, START + 40.5, 40.5,
                             "success", snapshot=snapshot, **fields)


def test_nothing_seen_yet():
    html = landing_page.render(view(), [], [], 0, "/metrics")
    assert "no snapshot operation seen yet" in html and "(DOWN)" in html and "QEMU ?" in html
    assert html.count("<th>") == len(landing_page.STUDY_COLUMNS)


def test_in_flight_on_top_then_finished_rows_linking_to_their_page():
    running = {"domain": "vm2", "snapshot": "big", "operation": "create",
               "elapsed_seconds": 12.34, "guest_memory_used_bytes": 2**30}
    done = finished(verdict=Verdict("storage-slow", 13.5, 3.0, {}, (), {}))
    html = landing_page.render(view(up=True, versions=Versions("9.0.0", "9.0.0", "7.2.0", 9_000_000)),
                               [running], [done], 1, "/metrics")
    rows = re.findall(r"<tr(?: class=running)?>.*?</tr>", html)
    assert rows[1].startswith("<tr class=running>") and "running 12.3 s" in rows[1]
    assert "in flight" in rows[1] and "1,074 MB" in rows[1]
    assert f'<a href="/operations/{done.id}">vm1</a>' in rows[2]
    assert "<td>40.50 s</td>" in rows[2] and "<td>storage-slow, 3.0x</td>" in rows[2]
    assert "<td>yes</td>" in rows[2] and "True" not in rows[2]  # memory
    assert "(up)" in html and "QEMU 7.2.0" in html and "newest of" not in html


def test_a_failed_operation_is_marked_and_has_no_verdict():
    failed = dataclasses.replace(finished("f1"), outcome="failure", memory=False,
                                 error="No space left on device")
    # judged before failed operations went unjudged: still no pace for it
    old = dataclasses.replace(finished("f2"), outcome="failure",
                              verdict=Verdict("unknown", 1.0, 9.0, {}, (), {}))
    html = landing_page.render(view(), [], [failed, old, finished()], 3, "/metrics")
    rows = re.findall(r"<tr(?: class=\w+)?>.*?</tr>", html)[1:]
    assert [r.startswith("<tr class=failed>") for r in rows] == [True, True, False]
    assert rows[0].endswith("<td>failed</td></tr>") and "<td>no</td>" in rows[0]
    assert rows[1].endswith("<td>failed</td></tr>") and "unknown" not in rows[1]
    assert "tr.failed{" in html  # visibly: the style marks the row


def test_only_the_newest_with_a_pointer_to_the_rest():
    html = landing_page.render(view(), [], [finished(f"s{i}") for i in range(3)], 250, "/m")
    assert "the 3 newest of 250" in html and 'href="/api/operations"' in html


def test_every_name_is_escaped():
    html = landing_page.render(view(hostname=HOSTILE, uri=HOSTILE), [{"domain": HOSTILE,
                               "elapsed_seconds": 1.0}], [finished(HOSTILE)], 1, "/metrics")
    assert "<script>" not in html and html.count("&lt;script&gt;") == 4


def test_cell_text_by_the_unit_its_key_names():
    assert landing_page.cell_text("qemu_written_bytes", 3 * 2**30) == "3,221 MB"  # as MB/s
    assert landing_page.cell_text("memory", True) == "yes"
    assert landing_page.cell_text("memory", False) == "no"
    assert landing_page.cell_text("duration_seconds", 1834.567) == "1,834.57 s"
    assert landing_page.cell_text("guest_cpu_ratio", 0.256) == "26 %"
    assert landing_page.cell_text("end", START) == time.strftime("%Y-%m-%d %H:%M:%S",
                                                                 time.localtime(START))
    assert landing_page.cell_text("disk_cache", ["none", "writeback"]) == "none, writeback"
    assert landing_page.cell_text("depth", 0) == "0"
    assert landing_page.cell_text("error", "") == landing_page.cell_text("error", None) == ""
