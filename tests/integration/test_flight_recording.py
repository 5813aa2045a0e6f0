"""The flight recorder on a real snapshot: its trace, at >= 5 Hz, served after a restart."""

from __future__ import annotations

import html
import json
import time

import pytest
from libvirt_snapshot_exporter.verdict.explain import CAUSES
from lse_devtools import testbed
from lse_devtools.driving import wait_operations
from lse_devtools.exporter_proc import ExporterProcess

pytestmark = pytest.mark.libvirt

POST_SECONDS = 3.0  # the recorder's after part (flight_recorder.POST_SECONDS)


def _finished_trace(exporter: ExporterProcess, op: dict) -> dict:
    def done() -> dict | None:
        trace = json.loads(exporter.get(f"/api/operations/{op['id']}/trace"))
        return trace if trace["t"][-1] >= op["end"] + POST_SECONDS - 0.5 else None

    return exporter.wait_for(done, 15, "the trace's after part")


def test_trace_covers_a_real_snapshot_and_survives_a_restart(filler, conn):
    exporter = ExporterProcess().start()
    try:
        time.sleep(6)  # the ring fills the part before the operation
        since = time.time()
        wall = testbed.create_snapshot(conn, filler, "traced")
        (op,) = wait_operations(exporter, filler.name, 1, since)
        trace = _finished_trace(exporter, op)
        # Judged by the collector once the trace is complete: in the log entry and the metrics.
        judged = exporter.wait_for(lambda: next(
            (o["verdict"] for o in json.loads(exporter.get("/api/operations"))["operations"]
             if o["id"] == op["id"] and o["verdict"]), None), 15, "the operation's verdict")
        pace = judged["pace_setter"]
        assert exporter.value("libvirt_snapshot_last_operation_verdict_info", domain=filler.name,
                              operation="create", pace_setter=pace) == 1
        assert exporter.value("libvirt_snapshot_operation_verdicts_total", operation="create",
                              pace_setter=pace) == 1
    finally:
        exporter.stop()
    testbed.delete_all_snapshots(conn, filler)

    assert (trace["id"], trace["domain"], trace["snapshot"]) == (op["id"], filler.name, "traced")
    times = trace["t"]
    assert times == sorted(times)
    assert times[0] <= op["start"] - 3.5  # a few seconds before, from the 1 Hz ring
    during = [t for t in times if op["start"] <= t <= op["end"]]
    assert len(during) >= 5 * op["duration_seconds"], (len(during), op["duration_seconds"], wall)
    qemu = trace["counters"]["qemu_write_bytes"]
    sampled = [(t, v) for t, v in zip(times, qemu, strict=True) if v is not None]
    assert sampled[0][0] - op["start"] <= 0.5  # recognised and sampled at once
    gaps = [b[0] - a[0] for a, b in zip(sampled, sampled[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] <= 0.2, gaps  # >= 5 Hz while sampled
    assert sampled[-1][1] - sampled[0][1] >= 300 * 2**20  # the guest's RAM, written
    assert sampled[-1][1] - sampled[0][1] <= 2 * op["qemu_written_bytes"] + 2**20
    dirty, writeback = trace["gauges"]["dirty"], trace["gauges"]["writeback"]
    assert max(v for v in dirty if v is not None) > 0
    assert all(v is not None for v in writeback)
    assert trace["device"], "no block device found under the guest's image"
    written = [v for v in trace["counters"]["device_write_bytes"] if v is not None]
    assert written[-1] > written[0]
    threads = trace["threads"]
    assert any(key.startswith("main:") for key in threads)
    main = [sum(col[i] or 0 for key, col in threads.items() if key.startswith("main:"))
            for i in range(len(times))]
    assert all(main[i] == trace["n"][i] for i, v in enumerate(qemu) if v is not None)

    again = ExporterProcess(state_dir=exporter.state_dir).start()
    try:
        kept = json.loads(again.get(f"/api/operations/{op['id']}/trace"))
        # What was served while the after part was sampled, then what stop() kept of the rest.
        size = len(trace["t"])
        assert len(kept["t"]) >= size and kept["t"][:size] == trace["t"]
        for kind in ("gauges", "counters", "threads"):
            assert {k: v[:size] for k, v in kept[kind].items() if k in trace[kind]} == trace[kind]
        (logged,) = [o for o in json.loads(again.get("/api/operations"))["operations"]
                     if o["id"] == op["id"]]
        assert logged["snapshot"] == "traced"
        verdict = json.loads(again.get(f"/api/operations/{op['id']}/verdict"))
        # The verdict the first exporter gave, served again. Which one it is depends on this
        # machine's disk: with no past rate, `size`, or `storage-slow` where the writers waited
        # on the device (seen on a CI machine).
        assert verdict["pace_setter"] == pace, verdict
        assert verdict["slowdown"] is None and verdict["figures"]["samples"] >= 5
        # The verdict kept in the log is the one served.
        assert logged["verdict"] == judged == {k: v for k, v in verdict.items() if k != "id"}
        page = again.get(f"/operations/{op['id']}")  # drawn in tests/unit's Chromium test
        assert f"<h2>Verdict: {html.escape(CAUSES.get(pace, pace))}</h2>" in page
        assert pace != "size" or "Size set the pace: nothing held" in page
        assert "id=trace-data" in page and "No trace is kept" not in page
    finally:
        again.stop()
