"""The landing page, rendered without HTTP: the verdict and the guest's pause right after what
the operation is, operations in flight on top, each finished one linking to its page, failed
ones marked, times with their zone, a filter by domain that finds every logged operation of
it, the newest only with a pointer to the rest, and every name from libvirt, the log or the
query escaped; through the route, what it shows of the log made once per version and filter
from the log's indexes. In a browser at 1,400 px: test_landing_page_browser.py."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
from libvirt_snapshot_exporter.loop.handoff import in_flight
from libvirt_snapshot_exporter.model.context import OperationContext
from libvirt_snapshot_exporter.model.observations import Versions
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.tracker.tracker import Operation
from libvirt_snapshot_exporter.web import landing_page, routes

HOSTILE = '<script>alert(1)</script>&"\''
START = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def view(**fields: object) -> View:
    return dataclasses.replace(View.initial("qemu:///system"), **fields)


def finished(snapshot: str = "s1", domain: str = "vm1", **fields: object) -> FinishedOperation:
    return FinishedOperation(domain, "create", "internal", True, START, START + 40.5, 40.5,
                             "success", snapshot=snapshot, paused_seconds=40.5, **fields)


def render(view: View, in_flight: list[dict], finished: list[FinishedOperation], total: int,
           telemetry_path: str, domain: str = "") -> str:
    """The page over `finished` (newest first), the newest of `total` logged, as the route
    gives it from the log's indexes."""
    matching = [r for r in finished if not domain or r.domain == domain]
    logged = landing_page.Logged.of(matching, len(matching) if domain else total, total,
                                    [r.domain for r in finished], finished, domain)
    return landing_page.render(view, in_flight, logged, telemetry_path, domain)


def table_rows(html: str) -> list[str]:
    """The table's rows after its header, each as one string."""
    table = html[html.index("<table id=operations>"):html.index("</table>")]
    return re.findall(r"<tr[^>]*>.*?</tr>", table)[1:]


def cells(row: str) -> list[str]:
    """The row's cells, a name's as its text (its span is checked on its own)."""
    return [re.sub(r'<span class=name title="([^"]*)">\1</span>', r"\1", c)
            for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]


@pytest.fixture()
def zone(monkeypatch):
    """The hypervisor in Paris: an hour ahead of UTC in January."""
    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_nothing_seen_yet():
    html = render(view(), [], [], 0, "/metrics")
    assert "no snapshot operation seen yet" in html and "(DOWN)" in html and "QEMU ?" in html
    assert len(re.findall(r"<th[ >]", html)) == len(landing_page.STUDY_COLUMNS)
    assert "http-equiv=refresh" not in html  # nothing in flight


def test_the_verdict_and_the_pause_come_right_after_what_the_operation_is():
    html = render(view(), [], [finished()], 1, "/metrics")
    head = re.findall(r"<th[^>]*>(.*?)</th>", html)
    assert head[:9] == ["domain", "snapshot", "operation", "verdict", "guest paused",
                        "guest down", "duration", "outcome", "ended"]
    assert len(head) == len(set(head)) == 22  # the study's other columns after them
    assert head[9:12] == ["kind", "memory", "depth"] and head[-1] == "QEMU wrote"
    row = cells(table_rows(html)[0])
    assert row[3:7] == ["", "40.50 s", "", "40.50 s"] and row[7] == "success"


def test_in_flight_on_top_then_finished_rows_linking_to_their_page():
    running = {"id": "a" * 16, "domain": "vm2", "snapshot": "big", "operation": "create",
               "memory": True, "start": START, "elapsed_seconds": 12.34,
               "guest_memory_used_bytes": 2**30}
    done = finished(verdict=Verdict("storage-slow", 13.5, 3.0, {}, (), {}))
    html = render(view(up=True, versions=Versions("9.0.0", "9.0.0", "7.2.0", 9_000_000)),
                               [running], [done], 1, "/metrics")
    rows = table_rows(html)
    assert rows[0].startswith("<tr class=running>")
    assert '<td class=elapsed data-elapsed="12.340">running 12.3 s</td>' in rows[0]
    assert "<td>in flight</td>" in rows[0] and "1,074 MB" in rows[0]
    assert cells(rows[0])[:4] == ["vm2", "big", "create", ""]
    assert rows[1].startswith("<tr><td>")  # a success: no mark
    assert cells(rows[1])[0] == f'<a href="operations/{done.id}">vm1</a>'
    assert cells(rows[0])[8].startswith('started <time datetime="2027-01-1')
    assert cells(rows[1])[3:8] == ["storage-slow, 3.0x", "40.50 s", "", "40.50 s", "success"]
    assert "<td>yes</td>" in rows[1] and "True" not in rows[1]  # memory
    assert "<td>yes</td>" in rows[0] and "True" not in rows[0]
    assert "(up)" in html and "QEMU 7.2.0" in html and "newest of" not in html
    # without JavaScript the page reloads itself while an operation is in flight; it says so
    assert '<noscript><meta http-equiv=refresh content="5"></noscript>' in html
    assert "This page updates itself" in html and "reloads\nevery 5 s" in html
    assert re.search(r'<script src="static/landing-page\.js\?v=[0-9a-f]{12}"></script>', html)


def test_a_failed_operation_is_marked_and_has_no_verdict():
    failed = dataclasses.replace(finished("f1"), outcome="failure", memory=False,
                                 error="No space left on device")
    # judged before failed operations went unjudged: still no pace for it
    old = dataclasses.replace(finished("f2"), outcome="failure", error=HOSTILE,
                              verdict=Verdict("unknown", 1.0, 9.0, {}, (), {}))
    html = render(view(), [], [failed, old, finished()], 3, "/metrics")
    rows = table_rows(html)
    assert [r.startswith("<tr class=failed>") for r in rows] == [True, True, False]
    row = cells(rows[0])
    assert row[3] == "failed: no verdict" and row[10] == "no"  # memory
    assert row[7] == '<span class=bad title="No space left on device">&#x2717; failed</span>'
    assert "unknown" not in rows[1] and "failed: no verdict" in rows[1]
    assert 'title="&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;"' in rows[1]
    assert cells(rows[2])[7] == "success"
    # visibly: the row's colour and a bar on its left, the outcome in bold red
    assert "tr.failed{background:" in html and "tr.failed td:first-child{box-shadow" in html
    assert ".bad{color:#b00;font-weight:bold" in html


def test_times_have_their_zone(zone):
    assert landing_page.when(START) == "2027-01-15 09:00:00 +01:00"
    assert landing_page.cell_text("end", START) == "2027-01-15 09:00:00 +01:00"
    html = render(view(), [], [finished()], 1, "/metrics")
    ended = START + 40.5
    assert cells(table_rows(html)[0])[8] == (
        f'<time datetime="2027-01-15T09:00:{ended % 60:02.0f}+01:00">'
        f"2027-01-15 09:00:{ended % 60:02.0f} +01:00</time>")
    assert "Times are the hypervisor's, with\ntheir offset from UTC" in html


def test_the_domain_filter_finds_every_logged_operation_of_the_domain():
    """Filtered over the whole log the route reads, not only the 100 newest."""
    log = [finished(f"n{i}") for i in range(150)] + [finished("old", "vm2")]
    running = [{"id": "b" * 16, "domain": "vm1", "elapsed_seconds": 1.0},
               {"id": "c" * 16, "domain": "vm3", "elapsed_seconds": 1.0}]
    html = render(view(), running, log, len(log), "/metrics", "vm2")
    rows = table_rows(html)
    assert len(rows) == 1 and cells(rows[0])[:2] == [
        f'<a href="operations/{log[-1].id}">vm2</a>', "old"]
    assert "the 1 operation of domain <b>vm2</b> among the 151 logged" in html
    assert '<option value="vm2" selected>vm2</option>' in html
    assert re.findall(r"<option[^>]*>(.*?)</option>", html) == ["all domains", "vm1", "vm2", "vm3"]
    assert "http-equiv=refresh" not in html  # what is in flight is another domain's

    html = render(view(), running, log, len(log), "/metrics", "vm1")
    rows = table_rows(html)
    assert len(rows) == 1 + landing_page.ROWS and rows[0].startswith("<tr class=running>")
    assert "the 100 newest of the 150 operations of domain <b>vm1</b>" in html
    assert "http-equiv=refresh" in html

    html = render(view(), [], log, len(log), "/metrics", "")
    assert len(table_rows(html)) == landing_page.ROWS and "the 100 newest of 151" in html
    assert '<option value="" selected>' not in html and " selected>" not in html


def test_a_hostile_domain_in_the_filter_stays_text():
    html = render(view(), [], [finished()], 1, "/metrics", HOSTILE)
    assert "<script>alert" not in html and HOSTILE not in html
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;"
    assert f'<option value="{escaped}" selected>{escaped}</option>' in html
    assert f"no operation of domain <b>{escaped}</b> among the 1 logged" in html
    assert "no snapshot operation of this domain in the log" in html


def test_the_domain_parameter():
    assert landing_page.domain_param({}) == ""
    assert landing_page.domain_param({"domain": ["a", "b"]}) == "b"


def test_the_signature_follows_starts_ends_and_verdicts():
    """What landing-page.js computes from /api/operations?limit=3 (in the browser test)."""
    ops = [finished(f"s{i}") for i in range(5)]
    judged = dataclasses.replace(ops[0], verdict=Verdict("size", 1.0, 1.0, {}, (), {}))
    flying = [{"id": "f" * 16}, {"id": "0" * 16}]
    sig = landing_page.signature(flying, ops, 9)
    assert sig == f"{'0' * 16} {'f' * 16}|9|{ops[0].id} {ops[1].id} {ops[2].id}"
    assert landing_page.signature(flying, [judged, *ops[1:]], 9) == sig.replace(
        f"|{ops[0].id} ", f"|{ops[0].id}v ")
    assert landing_page.signature([], [], 0) == "|0|"


def test_only_the_newest_with_a_pointer_to_the_rest():
    html = render(view(), [], [finished(f"s{i}") for i in range(3)], 250, "/m")
    assert "the 3 newest of 250" in html and 'href="api/operations"' in html


def test_every_name_is_escaped():
    html = render(view(hostname=HOSTILE, uri=HOSTILE), [{"domain": HOSTILE,
                               "elapsed_seconds": 1.0}], [finished(HOSTILE)], 1, "/metrics")
    body = html[:html.index("<script src=")]
    # host, URI; each row's domain, in its text and its tooltip; the filter's option, twice
    assert "<script>" not in body and body.count("&lt;script&gt;") == 8


def test_a_long_name_cannot_push_the_verdict_off_screen():
    """Cut by its width with an ellipsis, whole in its tooltip (the page is in a browser at
    1,400 px in test_operation_page_browser.py)."""
    long = "x" * 300
    html = render(view(), [], [finished(long, long)], 1, "/metrics")
    row = table_rows(html)[0]
    assert row.count(f'<span class=name title="{long}">{long}</span>') == 2
    assert ".name{display:inline-block;max-width:15em;overflow:hidden;text-overflow:ellipsis;" \
        in html and "td{white-space:nowrap}" in html


def test_cell_text_by_the_unit_its_key_names():
    assert landing_page.cell_text("qemu_written_bytes", 3 * 2**30) == "3,221 MB"  # as MB/s
    assert landing_page.cell_text("memory", True) == "yes"
    assert landing_page.cell_text("memory", False) == "no"
    assert landing_page.cell_text("duration_seconds", 1834.567) == "1,834.57 s"
    assert landing_page.cell_text("guest_cpu_ratio", 0.256) == "26 %"
    assert re.fullmatch(r"2027-01-1[45] \d\d:\d\d:00 [+-]\d\d:\d\d",
                        landing_page.cell_text("end", START))
    assert landing_page.cell_text("disk_cache", ["none", "writeback"]) == "none, writeback"
    assert landing_page.cell_text("depth", 0) == "0"
    assert landing_page.cell_text("error", "") == landing_page.cell_text("error", None) == ""


def test_the_log_s_part_is_made_once_per_version_and_filter_from_the_indexes(monkeypatch):
    """Through the route: a request reads the page's own rows from the log, never the whole
    log, whatever the filter; the filters kept are bounded."""
    oplog = OperationsLog(None, 5000)
    for i in range(5000):
        oplog.add(finished(f"s{i}", f"vm{i % 7}"))
    app = routes.App(StateStore(view()), oplog, lambda *_: (b"", "text/plain"), "/metrics")
    read = oplog.page

    def page(offset: int, limit: int) -> tuple[list[FinishedOperation], int]:
        assert limit <= landing_page.ROWS, "the whole log was copied for the landing page"
        return read(offset, limit)

    monkeypatch.setattr(oplog, "page", page)
    made = []
    of = landing_page.Logged.of
    monkeypatch.setattr(landing_page.Logged, "of", lambda *args: made.append(args) or of(*args))
    first = app.landing({"domain": ["vm3"]})
    assert app.landing({"domain": ["vm3"]}) == first and len(made) == 1
    assert "the 100 newest of the 714 operations of domain <b>vm3</b>" in first
    assert "no operation of domain" in app.landing({"domain": ["nowhere"]}) and len(made) == 2
    oplog.add(finished("new", "vm3"))
    assert "of the 715 operations" in app.landing({"domain": ["vm3"]}) and len(made) == 3
    for n in range(3 * routes.LANDING_FILTERS):
        app.landing({"domain": [f"random{n}"]})
    assert len(app.landing_logs._values) == routes.LANDING_FILTERS


def test_what_is_in_flight_is_as_it_stands_now_on_a_kept_page():
    oplog = OperationsLog(None)
    oplog.add(finished())
    store = StateStore(view())
    app = routes.App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics")
    assert "<tr class=running>" not in app.landing()
    op = Operation("vm9", "create", time.time() - 3, "control", 0.0, snapshot="big")
    store.publish(dataclasses.replace(store.view, in_flight=(in_flight(op, OperationContext()),)))
    html = app.landing()
    assert "<tr class=running>" in html and '<option value="vm9">vm9</option>' in html


def test_an_openstack_instance_s_name_is_beside_its_domain():
    """In grey beside instance-XXXXXXXX, in flight (its domain's, from the API) and finished
    (kept in its entry); escaped, and cut by its width like the other names; none without."""
    running = {"id": "a" * 16, "domain": "instance-0000002b", "instance_name": HOSTILE,
               "operation": "create", "elapsed_seconds": 1.0}
    done = finished(domain="instance-0000002a", instance_name="web-frontend-1")
    rows = table_rows(render(view(), [running], [done, finished()], 3, "/metrics"))
    beside = '<span class="name instance" title="OpenStack instance {0}">{0}</span>'
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;"
    assert cells(rows[0])[0] == "instance-0000002b " + beside.format(escaped)
    assert cells(rows[1])[0] == (f'<a href="operations/{done.id}">instance-0000002a '
                                 + beside.format("web-frontend-1") + "</a>")
    assert "instance" not in cells(rows[2])[0]
