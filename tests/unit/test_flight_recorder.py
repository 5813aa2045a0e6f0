"""The flight recorder's thread on this process' own /proc, and its trace served over HTTP."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

from libvirt_snapshot_exporter.model.operation import FinishedOperation, operation_id
from libvirt_snapshot_exporter.model.trace import from_json
from libvirt_snapshot_exporter.sources.host import HostReader
from libvirt_snapshot_exporter.sources.qemu_process import QemuThreads
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.trace_store import TraceStore
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.verdict.keeper import VerdictKeeper
from libvirt_snapshot_exporter.verdict.recorder import (
    ACTIVE_INTERVAL,
    POST_SECONDS,
    PRE_SECONDS,
    FlightRecorder,
)
from libvirt_snapshot_exporter.web.routes import App


def wait(check, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.05)
    raise AssertionError("timed out")


def entry(start: float, end: float) -> FinishedOperation:
    return FinishedOperation("vm", "create", "internal", True, start, end, end - start,
                             "success", snapshot="s1", depth=1)


def test_a_trace_has_the_ring_before_and_this_process_sampled_as_qemu(tmp_path):
    store = TraceStore(str(tmp_path), 5, 2**22)
    recorder = FlightRecorder("/proc", str(tmp_path), store)  # no pid file: this pid stays
    recorder.start()
    try:
        host = HostReader("/proc")
        for _ in range(3):  # the collection loop's own host samples fill the ring
            recorder.note_host(host.read())
            time.sleep(0.5)
        start = round(time.time() - 0.3, 3)  # as the log has it
        recorder.begin("vm/1", "vm", start, os.getpid(), [str(tmp_path)])
        time.sleep(1.0)
        end = round(time.time(), 3)
        recorder.end("vm/1", entry(start, end))
        trace_id = operation_id("vm", "s1", "create", start)
        partial = from_json(json.loads(recorder.get(trace_id)))  # served while it records
        assert partial.points[-1].t < end + POST_SECONDS
        wait(lambda: store.ids() == [trace_id], timeout=POST_SECONDS + 2)
    finally:
        recorder.stop()
    trace = from_json(json.loads(store.get(trace_id)))
    assert (trace.domain, trace.snapshot, trace.start, trace.end) == ("vm", "s1", start, end)
    ring = [p for p in trace.points if "qemu_write_bytes" not in p.counters]
    sampled = [p for p in trace.points if "qemu_write_bytes" in p.counters]
    assert len(ring) == 3 and all(start - PRE_SECONDS <= p.t < start + 0.3 for p in ring)
    assert {"free", "available", "dirty", "writeback"} <= set(ring[0].gauges)
    assert "psi_io_some" in ring[0].counters
    assert sampled[0].t - (start + 0.3) < 0.1  # sampled at once, not at the next idle tick
    assert sampled[-1].t >= end + POST_SECONDS
    gaps = sorted(b.t - a.t for a, b in zip(sampled, sampled[1:], strict=False))
    assert gaps[len(gaps) // 2] <= 2 * ACTIVE_INTERVAL
    assert {"free", "available", "cached", "dirty", "writeback", "dirty_threshold"} <= set(
        sampled[-1].gauges)
    assert {"psi_io_some", "pgscan_direct", "allocstall", "run_delay_main_ns"} <= set(
        sampled[-1].counters)
    assert all(sum(v for k, v in p.threads.items() if k.startswith("main:")) == 1
               for p in sampled)
    assert any(k.startswith("main:S:") and len(k) > 7 for p in sampled for k in p.threads)


def test_stop_keeps_the_traces_of_operations_that_ended(tmp_path):
    store = TraceStore("", 5, 2**22)
    recorder = FlightRecorder("/proc", str(tmp_path), store)
    recorder.start()
    now = time.time()
    recorder.begin("vm/1", "vm", now, None, [])
    recorder.begin("vm/2", "vm", now, None, [])  # still in flight at stop: no trace
    recorder.end("vm/1", entry(now, now))
    recorder.stop()
    assert store.ids() == [operation_id("vm", "s1", "create", now)]


def call(app: App, path: str) -> tuple[str, bytes]:
    status = []
    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"},
                        lambda s, _h, _e=None: status.append(s)))
    return status[0], body


def test_the_trace_endpoint_and_the_ids_in_the_operations_api(tmp_path):
    oplog = OperationsLog(str(tmp_path))
    start = 1795646016.123
    oplog.add(entry(start, start + 2))
    store = StateStore(View.initial("test:///default"))
    traces = TraceStore(str(tmp_path), 5, 2**22)
    recorder = FlightRecorder("/proc", str(tmp_path), traces)
    recorder.begin("vm/1", "vm", start, None, [])
    recorder.end("vm/1", entry(start, start + 2))
    recorder.stop()  # never started: stop() keeps the ended trace all the same
    app = App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics", recorder)
    (op,) = json.loads(call(app, "/api/operations")[1])["operations"]
    assert op["id"] == operation_id("vm", "s1", "create", start)
    status, body = call(app, f"/api/operations/{op['id']}/trace")
    assert status == "200 OK" and json.loads(body)["id"] == op["id"]
    assert call(app, f"/api/operations/{op['id']}/verdict")[0] == "404 Not Found"  # not judged
    keeper = VerdictKeeper(oplog, store, lambda: None)
    keeper.backfill(recorder.get)
    keeper.judge_traced()
    status, body = call(app, f"/api/operations/{op['id']}/verdict")
    verdict = json.loads(body)
    assert status == "200 OK" and verdict["id"] == op["id"]
    assert verdict["pace_setter"] == "too-short"  # no sample within it
    for path in ("/api/operations/0000000000000000/trace",
                 "/api/operations/0000000000000000/verdict", f"/api/operations/{op['id']}",
                 f"/api/operations/{op['id']}/trace/", "/api/operations/../trace"):
        assert call(app, path)[0] == "404 Not Found", path
    without = App(store, oplog, lambda *_: (b"", "text/plain"), "/metrics")
    assert call(without, f"/api/operations/{op['id']}/trace")[0] == "404 Not Found"


def test_retain_drops_recordings_no_longer_in_flight_but_not_ended_ones(tmp_path):
    store = TraceStore("", 5, 2**22)
    recorder = FlightRecorder("/proc", str(tmp_path), store)
    now = time.time()
    for key in ("vm/1", "vm/2", "vm/3"):
        recorder.begin(key, "vm", now, None, [])
    recorder.end("vm/3", entry(now, now))
    recorder.retain(["vm/1"])  # vm/2 vanished without ending; vm/3 ended: sampled on
    recorder.end("vm/2", entry(now + 1, now + 1))  # too late: nothing to finish
    recorder.stop()
    assert store.ids() == [operation_id("vm", "s1", "create", now)]


def test_idle_the_recorder_reads_nothing(tmp_path):
    recorder = FlightRecorder("/proc", str(tmp_path), TraceStore("", 5, 2**22))
    recorder.start()
    try:
        time.sleep(0.2)
        schedstat = Path(f"/proc/self/task/{recorder.native_id}/schedstat")
        cpu = schedstat.read_text().split()[0]
        time.sleep(1.5)
        assert schedstat.read_text().split()[0] == cpu  # not one ns of CPU
    finally:
        recorder.stop()


def test_the_ring_keeps_one_loop_sample_per_active_interval(tmp_path):
    recorder = FlightRecorder("/proc", str(tmp_path), TraceStore("", 5, 2**22))
    sample = HostReader("/proc").read()
    for i in range(100):  # a loop cycling every 10 ms on a burst of events
        recorder.note_host(dataclasses.replace(sample, time=sample.time + i / 100))
    now = sample.time + 1.0
    recorder.begin("vm/1", "vm", now, None, [])
    recorder.end("vm/1", entry(now, now))
    recorder.stop()
    (trace_id,) = recorder.store.ids()
    points = from_json(json.loads(recorder.store.get(trace_id))).points
    assert len(points) == 8  # 1 s at 8 Hz


def test_without_a_store_the_trace_goes_to_on_trace_and_recent_shows_the_last_points(tmp_path):
    recorder = FlightRecorder("/proc", str(tmp_path), None)  # bench's: it keeps its own
    finished = []
    recorder.on_trace = lambda trace, record: finished.append((trace, record))
    recorder.start()
    try:
        now = time.time()
        recorder.begin("vm/1", "vm", now, os.getpid(), [])
        wait(lambda: len(recorder.recent("vm/1", 2)) == 2)
        last = recorder.recent("vm/1", 2)
        assert last[1].t > last[0].t and "qemu_write_bytes" in last[1].counters
        assert recorder.recent("vm/2", 2) == ()
        recorder.end("vm/1", entry(now, time.time()))
        wait(lambda: finished, timeout=POST_SECONDS + 2)
    finally:
        recorder.stop()
    (trace, record), = finished
    assert trace.id == record.id and recorder.get(trace.id) is None  # nothing kept
    assert recorder.recent("vm/1", 2) == ()  # finished


def _thread_named(comm: str, stop: threading.Event) -> threading.Thread:
    """A thread of this process whose kernel name (what QEMU's threads are told by) is comm."""
    named = threading.Event()

    def run() -> None:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(comm)
        named.set()
        stop.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    named.wait(5)
    return thread


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_qemu_threads_read_the_writers_alone_from_files_kept_open_until_they_end(tmp_path):
    stop_worker, stop_other = threading.Event(), threading.Event()
    worker = _thread_named("worker", stop_worker)
    other = _thread_named("call_rcu", stop_other)
    before = open_files()
    qemu = QemuThreads("/proc", str(tmp_path), "vm", os.getpid())
    try:
        counters, states = qemu.read()
        assert sum(n for k, n in states.items() if k.startswith("main:")) == 1
        # waiting on its event, or running for a moment on a loaded machine (a run of the unit
        # suite on two workers read it running)
        assert sum(n for k, n in states.items() if k.startswith("worker:")) == 1
        assert not any(k.startswith("other:") for k in states)  # the verdict counts no other
        assert {"run_delay_main_ns", "run_delay_worker_ns"} <= set(counters)
        assert open_files() == before + 6  # stat, wchan, schedstat of the main thread and worker
        qemu.read()  # read again from the same files
        assert open_files() == before + 6
        stop_worker.set()
        worker.join()
        # join() returns as the Python thread ends; the kernel's task can outlive it a moment
        # (CI read it once more right after the join)
        deadline = time.monotonic() + 5
        while Path(f"/proc/self/task/{worker.native_id}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not any(k.startswith("worker:") for k in qemu.read()[1])
        assert open_files() == before + 3  # the ended worker's closed
    finally:
        qemu.close()
        stop_worker.set()
        stop_other.set()
        other.join()
    assert open_files() == before
