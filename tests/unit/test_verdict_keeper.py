"""Verdicts given once an operation's trace is complete: the trace arrives from another thread,
wakes the loop, and the loop judges it against the operations logged before it and keeps the
verdict in the log entry; a trace it cannot judge leaves the entry as it was."""

from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
from libvirt_snapshot_exporter.model.operation import Verdict
from libvirt_snapshot_exporter.model.trace import Point
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict.keeper import VerdictKeeper
from lse_devtools.handbuilt_trace import WRITTEN, history, slow_create, slow_trace


def keeper() -> tuple[VerdictKeeper, threading.Event]:
    oplog = OperationsLog(None)
    for entry in [*history(), slow_create()]:
        oplog.add(entry)
    woken = threading.Event()
    store = StateStore(View.initial("test:///default"))
    return VerdictKeeper(oplog, store, woken.set), woken


def logged(k: VerdictKeeper):
    return next(e for e in k.oplog.page(0, 10)[0] if e.id == slow_create().id)


def test_a_complete_trace_is_judged_on_the_loop_and_kept_in_the_log():
    k, woken = keeper()
    thread = threading.Thread(target=k.traced, args=(slow_trace(), slow_create()))
    thread.start()
    thread.join()
    assert woken.is_set() and logged(k).verdict is None  # not judged on the recorder's thread
    version = k.oplog.version
    k.judge_traced()
    verdict = logged(k).verdict
    assert verdict.pace_setter == "storage-slow" and 2.5 < verdict.slowdown < 3.5
    assert k.oplog.version > version
    assert k.store.operations.host.verdicts == {("create", "storage-slow"): 1}
    k.judge_traced()  # nothing more came in
    assert k.store.operations.host.verdicts == {("create", "storage-slow"): 1}


def test_a_trace_it_cannot_judge_leaves_no_verdict_and_one_log_line(caplog):
    k, _ = keeper()
    # Points whose times are no numbers: judge() fails comparing them with the start.
    broken = dataclasses.replace(slow_trace(), points=tuple(Point("?", 1) for _ in range(3)))
    k.traced(broken, slow_create())
    k.judge_traced()
    assert logged(k).verdict is None and k.store.operations.host.verdicts == {}
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("no verdict on create of vm1/s1: TypeError")


def test_a_bench_runs_creates_seed_the_rate_when_the_log_has_none():
    """A new exporter's first create is judged against the rate bench measured (rate_seed)."""
    oplog = OperationsLog(None)
    oplog.add(slow_create())
    store = StateStore(View.initial("test:///default"))
    unseeded = VerdictKeeper(oplog, store, lambda: None)
    unseeded.traced(slow_trace(), slow_create())
    unseeded.judge_traced()
    assert logged(unseeded).verdict.slowdown is None  # no past rate: nothing to compare with
    seeded = VerdictKeeper(oplog, store, lambda: None, rate_seed=tuple(history()))
    seeded.traced(slow_trace(), slow_create())
    seeded.judge_traced()
    verdict = logged(seeded).verdict
    assert verdict.pace_setter == "storage-slow" and 2.5 < verdict.slowdown < 3.5


def test_the_logged_figures_are_the_traces_so_log_page_and_metrics_agree():
    """The loop's ~4 Hz figures are replaced by those of the 8 Hz trace once it is complete."""
    oplog = OperationsLog(None)
    rough = dataclasses.replace(slow_create(), host_memory_free_min_bytes=None,
                                host_dirty_peak_bytes=1, qemu_written_bytes=None)
    oplog.add(rough)
    k = VerdictKeeper(oplog, StateStore(View.initial("test:///default")), lambda: None)
    k.traced(slow_trace(), rough)
    k.judge_traced()
    fine = logged(k)
    assert fine.host_memory_free_min_bytes < 300 * 2**20 < fine.host_dirty_peak_bytes
    assert fine.qemu_written_bytes == pytest.approx(WRITTEN, rel=0.02)
    assert fine.verdict.pace_setter == "storage-slow" or fine.verdict.slowdown is None


def test_operations_logged_with_a_trace_but_no_verdict_are_judged_after_a_restart(tmp_path):
    traces = TraceStore(str(tmp_path), 5, 2**24)
    traces.add(slow_trace())
    k, _ = keeper()
    assert logged(k).verdict is None
    k.backfill(traces.get)
    k.judge_traced()
    assert logged(k).verdict.pace_setter == "storage-slow"
    untraced = k.oplog.page(0, 10)[0][-1]
    assert untraced.verdict is None  # no trace kept: nothing to judge it by


def test_verdicts_of_the_earlier_judge_are_judged_again_after_a_restart(tmp_path):
    """A verdict logged before models per operation (no `model`) and a failure given a pace
    are judged again from their kept traces: the revert that read '23.5x slower' by bytes
    written, and a pace for an operation that failed, leave the log."""
    traces = TraceStore(str(tmp_path), 5, 2**24)
    trace = slow_trace()
    traces.add(trace)
    k, _ = keeper()
    old = Verdict("unknown", 0.2, 23.5, {"cpu": 0.0}, (), {"samples": 2.0})
    judged = dataclasses.replace(logged(k), verdict=old)
    k.oplog.amend(judged)
    k.backfill(traces.get)
    k.judge_traced()
    assert logged(k).verdict.model == "written" and logged(k).verdict.slowdown != 23.5
    k.oplog.amend(dataclasses.replace(logged(k), outcome="failure", error="disk full"))
    k.backfill(traces.get)
    k.judge_traced()
    assert logged(k).verdict is None and logged(k).error == "disk full"


def test_figures_that_would_not_read_back_never_reach_the_log(caplog):
    """A trace whose QEMU counter grows past 2**63 bytes (it restarted twice, near its top):
    the entry keeps its own figures and no verdict, with one line, rather than a log written
    with a figure the next start drops (and the entry's history with it)."""
    k, _ = keeper()
    before = logged(k)
    trace = slow_trace()
    points = tuple(dataclasses.replace(p, counters={
        **p.counters, "qemu_write_bytes": 0 if i % 2 else 9e18}) for i, p in enumerate(trace.points))
    k.traced(dataclasses.replace(trace, points=points), slow_create())
    k.judge_traced()
    assert logged(k) == before and logged(k).checked() == before
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("no verdict on create of vm1/s1: InvalidRecord: bad 'qemu_written")


def test_names_reach_the_log_escaped(caplog):
    caplog.set_level(logging.INFO)
    k, _ = keeper()
    forged = "s1\n2026-12-06 INFO verdict on create of vm1/forged: size"
    record = dataclasses.replace(slow_create(), snapshot=forged)
    k.oplog.add(record)
    k.traced(slow_trace(), record)
    k.judge_traced()
    (line,) = [r.getMessage() for r in caplog.records if "verdict on" in r.getMessage()]
    assert "\n" not in line and "s1\\n2026-12-06 INFO" in line


def test_a_kept_trace_of_another_operation_is_not_judged(caplog):
    """A trace file holding another domain's trace under this operation's name is no
    evidence for it: one line, no verdict."""
    traces = TraceStore("", 5, 2**24)
    traces.add(dataclasses.replace(slow_trace(domain="vm2"), id=slow_create().id))
    k, _ = keeper()
    k.backfill(traces.get)
    k.judge_traced()
    assert logged(k).verdict is None
    assert any("not judged: the trace of create of vm2" in r.getMessage() for r in caplog.records)
