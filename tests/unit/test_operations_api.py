"""/api/operations and the lookup of one operation, without HTTP: pages of the log and where
the next starts, the operations in flight before them, a page rendered once per version of the
log and sent as it is kept, parameters out of range, the verdict kept, judged from the trace,
or absent, and an operation found by its id without going through the log."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from libvirt_snapshot_exporter.loop.handoff import in_flight
from libvirt_snapshot_exporter.model.context import OperationContext
from libvirt_snapshot_exporter.model.observations import GuestStats, OpenStackInstance
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import DomainView, StateStore, View
from libvirt_snapshot_exporter.tracker.tracker import Operation
from libvirt_snapshot_exporter.web import api as web_api
from libvirt_snapshot_exporter.web.api import BadRequest, OperationsApi, int_param
from lse_devtools.handbuilt_trace import history, slow_create, slow_trace

START = 1_800_000_000.0


def entry(i: int) -> FinishedOperation:
    return FinishedOperation("vm1", "create", "internal", True, START + 60 * i,
                             START + 60 * i + 2, 2.0, "success", snapshot=f"s{i}")


def api_of(entries: list[FinishedOperation], traces: TraceStore | None = None,
           size: int = 1000) -> OperationsApi:
    oplog = OperationsLog(None, size)
    for e in entries:
        oplog.add(e)
    return OperationsApi(StateStore(View.initial("test:///default")), oplog, traces)


def page(api: OperationsApi, query: str = "") -> dict:
    params = dict(p.split("=") for p in query.split("&")) if query else {}
    return json.loads(b"".join(api.operations_json({k: [v] for k, v in params.items()})))


def test_pages_of_the_log_newest_first_and_where_the_next_starts():
    api = api_of([entry(i) for i in range(25)])
    first = page(api, "limit=10")
    assert [o["snapshot"] for o in first["operations"]] == [f"s{i}" for i in range(24, 14, -1)]
    assert (first["total"], first["offset"], first["limit"], first["next_offset"]) == (25, 0, 10, 10)
    assert all(o["id"] == entry(int(o["snapshot"][1:])).id for o in first["operations"])
    last = page(api, "offset=20&limit=10")
    assert len(last["operations"]) == 5 and last["next_offset"] is None
    assert page(api, "offset=9999")["operations"] == [] and page(api)["limit"] == 1000


def test_a_page_is_rendered_once_per_version_of_the_log(monkeypatch):
    api = api_of([entry(0)])
    reads = []
    read = api.oplog.page
    monkeypatch.setattr(api.oplog, "page", lambda *args: reads.append(args) or read(*args))
    first, again = api.operations_json({}), api.operations_json({})
    assert first == again and reads == [(0, 1000)]
    assert first[1] is again[1]  # the cached bytes themselves are sent, never a copy of them
    api.oplog.add(entry(1))
    assert page(api)["total"] == 2 and len(reads) == 2


@pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=-1", "limit=1e3",
                                   "limit=abc", "offset=-5", "offset=" + "9" * 5000, "limit=\0",
                                   "limit=\u0663"])
def test_parameters_out_of_range_are_refused_by_name(query):
    name, value = query.split("=")
    with pytest.raises(BadRequest, match=f"^{name} must be an integer from"):
        int_param({name: [value]}, name, 1, 1 if name == "limit" else 0, 10_000)


def test_operations_in_flight_come_first_as_they_stand_now():
    api = api_of([entry(0)])
    op = Operation("vm2", "create", time.time() - 3, "control", 0.0, snapshot="big", memory=True)
    ctx = OperationContext(qemu_written_bytes=2**29, guest_memory_used_bytes=2**30)
    api.store.publish(dataclasses.replace(api.store.view, in_flight=(in_flight(op, ctx),)))
    (running,) = page(api)["in_flight"]
    assert (running["domain"], running["snapshot"], running["progress_estimate"]) == \
        ("vm2", "big", 0.5)
    assert 3 <= running["elapsed_seconds"] < 13 and running["qemu_written_bytes"] == 2**29


def test_the_verdict_served_is_the_one_kept_in_the_log_never_judged_again(tmp_path):
    traces = TraceStore(str(tmp_path), 5, 2**24)
    traces.add(slow_trace())
    api = api_of([*history(), slow_create()], traces)
    record, trace, verdict = api.judged(slow_create().id)
    assert record == slow_create() and trace is not None and verdict is None  # not yet judged
    assert api.verdict_json(slow_create().id) is None
    assert json.loads(api.trace_json(slow_create().id))["id"] == slow_create().id
    kept = dataclasses.replace(slow_create(), verdict=Verdict("storage-slow", 10.0, 3.0, {}, (), {}))
    api = api_of([*history(), kept], traces)
    assert api.judged(kept.id) == (kept, api.judged(kept.id)[1], kept.verdict)
    assert json.loads(api.verdict_json(kept.id))["pace_setter"] == "storage-slow"
    untraced = history()[0]
    assert api.judged(untraced.id) == (untraced, None, None)
    assert api.verdict_json(untraced.id) is None and api.judged("0" * 16) is None


class Untouchable:
    """A trace store that fails the test when read."""

    def get(self, trace_id: str) -> bytes | None:
        raise AssertionError(f"trace {trace_id} read for an id not in the log")


def test_an_id_is_found_in_the_index_and_a_missing_one_costs_one_look_up(monkeypatch):
    entries = [entry(i) for i in range(5000)]
    api = api_of(entries, Untouchable(), size=5000)

    def scan(*_args: object) -> None:
        raise AssertionError("the log was copied to find one id")

    monkeypatch.setattr(api.oplog, "page", scan)
    for missing in ("0" * 16, "f" * 16, entries[0].id[::-1]):
        assert api.judged(missing) is None and api.verdict_json(missing) is None
        assert api.found(missing) is None
    api.traces = None
    assert api.judged(entries[1234].id) == (entries[1234], None, None)


class Counting:
    """A trace store that counts its reads."""

    def __init__(self, traces: TraceStore) -> None:
        self.traces = traces
        self.reads: list[str] = []

    def get(self, trace_id: str) -> bytes | None:
        self.reads.append(trace_id)
        return self.traces.get(trace_id)


def test_a_logged_operation_s_trace_is_read_once_per_period_whoever_asks(tmp_path, monkeypatch):
    traces = TraceStore(str(tmp_path), 5, 2**24)
    traces.add(slow_trace())
    counting = Counting(traces)
    api = api_of([*history(), slow_create()], counting)
    monkeypatch.setattr(web_api, "TRACE_RECHECK_SECONDS", 1e9)  # one period all along
    for _ in range(50):
        assert api.judged(slow_create().id)[1] is not None
        assert json.loads(api.trace_json(slow_create().id))["id"] == slow_create().id
    assert counting.reads == [slow_create().id]
    for n in range(100):  # ids not in the log: asked each time, kept nowhere
        assert api.trace_json(f"{n:016x}") is None
    assert len(counting.reads) == 101 and api.trace_json(slow_create().id) is not None
    assert len(counting.reads) == 101
    monkeypatch.setattr(web_api, "TRACE_RECHECK_SECONDS", 1e-9)
    api.trace_json(slow_create().id)
    assert len(counting.reads) == 102  # read again in the next period


def test_a_trace_of_another_domain_or_operation_under_the_id_is_not_shown():
    """A trace file is named by the operation's id alone: one whose contents are another
    domain's or another operation's is not that operation's trace."""
    entry, trace = slow_create(), slow_trace()
    body = json.dumps(trace.to_json()).encode()
    assert web_api.judged(entry, body)[1] is not None
    for changes in ({"domain": "other"}, {"operation": "delete"}):
        other = json.dumps(dataclasses.replace(trace, **changes).to_json()).encode()
        assert web_api.judged(entry, other) == (entry, None, entry.verdict)


def test_each_operation_has_its_openstack_instance_name():
    """In flight: its domain's, as the domain's XML last gave it (null for a domain without
    Nova's metadata); finished: the one kept in its entry, so it outlives the instance, and
    null in an entry logged before names were (the log reads it without the field)."""
    old = FinishedOperation.from_json({k: v for k, v in entry(0).to_json().items()
                                       if k != "instance_name"})
    api = api_of([old, dataclasses.replace(entry(1), instance_name="web-1")])
    nova = DomainView("instance-0000002a", "6f1b3a52-8c0e-4d3f-9a7b-2e5c4d6a8b10", 1, 1,
                      GuestStats(), (), None, (), None, {}, OpenStackInstance("web-2"))
    running = [in_flight(Operation(domain, "create", time.time() - 1, "control", 0.0), None)
               for domain in ("instance-0000002a", "vm2")]
    api.store.publish(dataclasses.replace(api.store.view, in_flight=tuple(running),
                                          domains={"instance-0000002a": nova}))
    answer = page(api)
    assert [(o["domain"], o["instance_name"]) for o in answer["in_flight"]] == [
        ("instance-0000002a", "web-2"), ("vm2", None)]
    assert [o["instance_name"] for o in answer["operations"]] == ["web-1", None]
