"""The trace structures: merging, downsampling, JSON round trip, run delays, ids, the store."""

from __future__ import annotations

import json
import os

import pytest
from libvirt_snapshot_exporter.model.operation import OPERATIONS, operation_id
from libvirt_snapshot_exporter.model.trace import (
    MAX_POINTS,
    MAX_POINTS_PER_SECOND,
    Point,
    RunDelays,
    Trace,
    TraceBuilder,
    from_json,
    merge,
    thread_key,
    thread_role,
)
from libvirt_snapshot_exporter.store.trace_store import MAX_TRACE_BYTES, TraceStore


def point(t: float, free: int = 100, dirty: int = 0, written: float = 0.0,
          threads: dict[str, int] | None = None) -> Point:
    return Point(t, 1, {"free": free, "dirty": dirty, "dirty_threshold": int(t)},
                 {"qemu_write_bytes": written}, threads or {})


def test_merge_keeps_extremes_end_counters_and_sums_thread_samples():
    a = point(1.0, free=50, dirty=9, written=10, threads={"main:D:rq_qos_wait": 1})
    b = point(2.0, free=70, dirty=3, written=25, threads={"main:D:rq_qos_wait": 1, "main:R:": 1})
    m = merge(a, b)
    assert (m.t, m.n) == (2.0, 2)
    assert m.gauges == {"free": 50, "dirty": 9, "dirty_threshold": 2}
    assert m.counters == {"qemu_write_bytes": 25}
    assert m.threads == {"main:D:rq_qos_wait": 2, "main:R:": 1}


def test_merge_keeps_a_figure_only_one_side_has():
    a = Point(1.0, 1, {"free": 5}, {"device_write_bytes": 7.0})
    b = Point(2.0, 1, {}, {"qemu_write_bytes": 1.0})
    assert merge(a, b) == Point(2.0, 2, {"free": 5},
                                {"device_write_bytes": 7.0, "qemu_write_bytes": 1.0}, {})


def test_a_short_trace_keeps_every_sample():
    builder = TraceBuilder(max_points=100)
    for i in range(60):
        builder.add(point(i / 8))
    assert [p.t for p in builder.points()] == [i / 8 for i in range(60)]
    assert builder.stride == 1


def test_a_30_minute_trace_is_bounded_evenly_spaced_and_loses_no_count():
    builder = TraceBuilder(max_points=1200)
    samples = 30 * 60 * 8
    for i in range(samples):
        builder.add(point(i / 8, free=1000 - i % 500, written=i * 4096.0,
                          threads={"main:D:balance_dirty_pages": i % 2}))
    points = builder.points()
    assert 600 <= len(points) <= 1200
    assert builder.stride == 16 and len(points) == 900
    assert sum(p.n for p in points) == samples
    assert {p.n for p in points} == {16}
    assert points[-1].t == (samples - 1) / 8
    assert points[-1].counters["qemu_write_bytes"] == (samples - 1) * 4096  # exact at the end
    assert min(p.gauges["free"] for p in points) == 501  # the extreme survives merging
    assert sum(p.threads["main:D:balance_dirty_pages"] for p in points) == samples // 2


def test_a_partly_filled_last_point_is_shown():
    builder = TraceBuilder(max_points=4)
    for i in range(7):
        builder.add(point(float(i)))
    points = builder.points()
    assert builder.stride == 2
    assert [p.n for p in points] == [2, 2, 2, 1]
    assert sum(p.n for p in points) == 7


def test_max_points_below_two_is_refused():
    with pytest.raises(ValueError):
        TraceBuilder(max_points=1)


def trace(trace_id: str = "0123456789abcdef", points: int = 3) -> Trace:
    pts = tuple(point(10.0 + i / 8, written=i * 1.5, threads={"main:R:": 1}) for i in range(points))
    return Trace(trace_id, "vm", "s1", "create", 10.0, 10.2, 0.125, "vda", pts)


def test_json_is_columnar_and_round_trips():
    t = Trace("0123456789abcdef", "vm", "s1", "create", 10.0, 10.2, 0.125, "vda",
              (point(10.0, threads={"main:R:": 1}), Point(10.125, 2, {"free": 1}, {}, {})))
    data = json.loads(json.dumps(t.to_json()))
    assert data["t"] == [10.0, 10.125] and data["n"] == [1, 2]
    assert data["gauges"]["free"] == [100, 1]
    assert data["gauges"]["dirty"] == [0, None]
    assert data["threads"] == {"main:R:": [1, None]}
    assert from_json(data) == t


@pytest.mark.parametrize("change", [
    lambda d: d.update(version=2), lambda d: d.pop("t"), lambda d: d.update(domain=3),
    lambda d: d.update(n=[1, 1]), lambda d: d.update(n=[0, 1, 1]),
    lambda d: d["gauges"].update(free=[1]), lambda d: d["gauges"].update(free=["x", 1, 2]),
    lambda d: d.update(start=float("nan")), lambda d: d.update(t=[1, 2, True]),
    lambda d: d.update(gauges=[]),
])
def test_from_json_refuses_what_is_not_a_trace(change):
    data = trace().to_json()
    change(data)
    with pytest.raises(ValueError):
        from_json(data)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_s_trace_is_kept(tmp_path, operation):
    """A save's and a restore's trace too: the store keeps only what reads back."""
    store = TraceStore(str(tmp_path), count=2, max_bytes=2**20)
    kept = Trace("0123456789abcdef", "vm", "", operation, 10.0, 10.2, 0.125, "vda",
                 trace().points)
    store.add(kept)
    assert from_json(json.loads(store.get(kept.id))) == kept


def test_from_json_refuses_a_list():
    with pytest.raises(ValueError):
        from_json([])


def test_run_delays_add_each_threads_growth_across_thread_exits():
    delays = RunDelays()
    assert delays.update([(10, "main", 100), (11, "worker", 50)]) == {"main": 0, "worker": 0}
    assert delays.update([(10, "main", 160), (11, "worker", 80)]) == {"main": 60, "worker": 30}
    # worker 11 ended, 12 started: 11's growth stays counted, 12 counts from its first sample
    assert delays.update([(10, "main", 160), (12, "worker", 500)]) == {"main": 60, "worker": 30}
    assert delays.update([(10, "main", 170), (12, "worker", 520)]) == {"main": 70, "worker": 50}


@pytest.mark.parametrize(("tid", "name", "role"), [
    (100, "qemu-system-x86", "main"), (101, "qemu-system-x86", "other"),
    (102, "CPU 0/TCG", "vcpu"), (103, "CPU 1/KVM", "vcpu"), (104, "worker", "worker"),
    (105, "iou-wrk-100", "worker"), (106, "live_migration", "migration"),
    (107, "IO iothread1", "iothread"), (108, "IO mon_iothread", "other"),
    (109, "call_rcu", "other"),
])
def test_thread_roles(tid, name, role):
    assert thread_role(100, tid, name) == role


def test_thread_keys():
    assert thread_key("main", "D", "balance_dirty_pages") == "main:D:balance_dirty_pages"
    assert thread_key("main", "R", "0") == "main:R:"
    assert thread_key("worker", "S", "0") == "worker:S:"
    assert thread_key("worker", "D", "fs:wait\n" + "x" * 200) == "worker:D:fs_wait_" + "x" * 120


def test_operation_id_is_stable_and_distinct():
    a = operation_id("vm", "s1", "create", 1795646016.1234)
    assert a == operation_id("vm", "s1", "create", 1795646016.123)  # the log's rounding
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != operation_id("vm", "s1", "delete", 1795646016.123)
    assert a != operation_id("vm", "s1", "create", 1795646016.124)


# --- the store --------------------------------------------------------------------------------

def test_store_keeps_the_newest_count(tmp_path):
    store = TraceStore(str(tmp_path), count=2, max_bytes=2**20)
    for i in range(4):
        store.add(trace(f"{i:016x}"))
    assert store.ids() == [f"{2:016x}", f"{3:016x}"]
    assert sorted(os.listdir(tmp_path / "traces")) == [f"{2:016x}.json", f"{3:016x}.json"]
    assert from_json(json.loads(store.get(f"{3:016x}"))) == trace(f"{3:016x}")
    assert store.get(f"{0:016x}") is None


def test_store_bounded_in_bytes_on_disk_and_in_memory(tmp_path):
    size = len(json.dumps(trace().to_json(), separators=(",", ":")))
    for directory in (str(tmp_path), ""):
        store = TraceStore(directory, count=100, max_bytes=int(size * 2.5))
        for i in range(5):
            store.add(trace(f"{i:016x}"))
        assert store.ids() == [f"{3:016x}", f"{4:016x}"]
        assert store.get(f"{4:016x}") is not None


def test_a_trace_over_the_byte_bound_is_not_kept(tmp_path):
    store = TraceStore(str(tmp_path), count=10, max_bytes=1000)
    store.add(trace(points=200))
    assert store.ids() == []


def test_store_reads_its_traces_back_and_drops_bad_files(tmp_path):
    store = TraceStore(str(tmp_path), count=3, max_bytes=2**20)
    for i in range(3):
        store.add(trace(f"{i:016x}"))
    bad = tmp_path / "traces" / f"{1:016x}.json"
    mtime = bad.stat().st_mtime
    bad.write_text("{not json")
    os.utime(bad, (mtime, mtime))
    again = TraceStore(str(tmp_path), count=2, max_bytes=2**20)  # a smaller N after a restart
    assert again.ids() == [f"{1:016x}", f"{2:016x}"]
    assert not (tmp_path / "traces" / f"{0:016x}.json").exists()
    assert again.get(f"{1:016x}") is None  # unreadable: dropped
    assert again.ids() == [f"{2:016x}"]
    assert json.loads(again.get(f"{2:016x}"))["id"] == f"{2:016x}"


def test_an_unwritable_directory_loses_the_trace_not_the_exporter(tmp_path):
    (tmp_path / "traces").write_text("a file where the directory should be")
    store = TraceStore(str(tmp_path), count=3, max_bytes=2**20)
    store.add(trace())
    assert store.ids() == [] and store.get(trace().id) is None


# --- a trace read back is checked: bounded, in time order, finite, named as its file -------------


def _valid(points: int = 3) -> dict:
    return trace(points=points).to_json()


@pytest.mark.parametrize("change", [
    lambda d: d.update(t=0),  # not a list
    lambda d: d.update(threads={"main": [1, 1, 1]}),  # a thread key without colons
    lambda d: d.update(threads={"robot:R:": [1, 1, 1]}),
    lambda d: d.update(threads={"main:R:x\ny": [1, 1, 1]}),
    lambda d: d.update(threads={"main:R:": [1, -1, 1]}),
    lambda d: d["counters"].update(qemu_write_bytes=[0, 10**400, 1]),  # overflows a float
    lambda d: d["counters"].update(qemu_write_bytes=[0, 1e300, 1]),
    lambda d: d["counters"].update({"A B": [1, 2, 3]}),
    lambda d: d["gauges"].update(memfree=[1, 2, 3]),
    lambda d: d.update(t=[10.0, 10.0, 10.25]),  # not strictly increasing
    lambda d: d.update(t=[10.25, 10.125, 10.5]),
    lambda d: d.update(t=[-4000.0, 10.125, 10.25]),  # not within the hour around it
    lambda d: d.update(start=10.5, end=10.2),
    lambda d: d.update(id="../../etc/passwd"),
    lambda d: d.update(operation="<b>"),
    lambda d: d.update(interval_seconds=0),
    lambda d: d.update(n=[1, 2**40, 1]),
])
def test_from_json_refuses_a_trace_out_of_bounds(change):
    data = _valid()
    change(data)
    with pytest.raises(ValueError):
        from_json(data)


def test_from_json_refuses_the_trace_of_another_name():
    assert from_json(_valid(), "0123456789abcdef") == trace()
    with pytest.raises(ValueError, match="is not fedcba9876543210"):
        from_json(_valid(), "fedcba9876543210")


def test_from_json_bounds_the_points_and_their_density():
    """What made the page quadratic: many points within one second (here all of them)."""
    many = Trace("0123456789abcdef", "vm", "s1", "create", 10.0, 2000.0, 0.125, "vda",
                 tuple(point(10.0 + i / 8) for i in range(MAX_POINTS + 2)))
    with pytest.raises(ValueError, match="points, over"):
        from_json(many.to_json())
    assert len(from_json(Trace(**{**many.__dict__, "points": many.points[:-1]}).to_json())
               .points) == MAX_POINTS + 1
    dense = Trace("0123456789abcdef", "vm", "s1", "create", 10.0, 20.0, 0.125, "vda",
                  tuple(point(10.0 + i / 1000) for i in range(MAX_POINTS_PER_SECOND + 1)))
    with pytest.raises(ValueError, match="points in a second"):
        from_json(dense.to_json())


def test_builder_merges_a_sample_too_close_to_the_point_before_or_before_it():
    builder = TraceBuilder()
    for t in (10.0, 10.008, 10.125, 10.1, 10.25):  # woken early; then the clock steps back
        builder.add(point(t))
    assert [(p.t, p.n) for p in builder.points()] == [(10.008, 2), (10.125, 2), (10.25, 1)]


def test_builder_output_always_reads_back():
    """However the sampler is woken (here every 10 ms for a while), the builder's points pass
    from_json's density bound."""
    builder = TraceBuilder()
    t = 10.0
    for i in range(400):
        t += 0.01 if i % 40 < 30 else 0.125
        builder.add(point(t))
    made = Trace("0123456789abcdef", "vm", "s1", "create", 10.0, t, 0.125, "vda",
                 builder.points())
    read = from_json(json.loads(json.dumps(made.to_json()))).points
    assert [p.n for p in read] == [p.n for p in made.points] and sum(p.n for p in read) == 400


def test_every_trace_from_json_accepts_is_drawn_and_judged():
    """Odd but valid traces (one point; every point before the start; no figure at all)
    render and judge without an exception: a page is never a 500 for a trace that reads."""
    from libvirt_snapshot_exporter.model.operation import FinishedOperation
    from libvirt_snapshot_exporter.verdict.explain import charts
    from libvirt_snapshot_exporter.verdict.judge import judge
    from libvirt_snapshot_exporter.web import operation_page

    record = FinishedOperation("vm", "create", "internal", True, 10.0, 10.2, 0.2, "success",
                               snapshot="s1", id="0123456789abcdef")
    odd = [
        trace(points=1),
        Trace("0123456789abcdef", "vm", "s1", "create", 10.0, 10.2, 0.125, "", (
            Point(5.0, 1), Point(6.0, 1))),
        Trace("0123456789abcdef", "vm", "s1", "revert", 10.0, 10.2, 0.125, "", tuple(
            Point(10.0 + i / 8, 1, {}, {}, {"worker:D:": 3, "other:S:x.y$1": 1})
            for i in range(30))),
    ]
    for t in odd:
        read = from_json(json.loads(json.dumps(t.to_json())))
        verdict = judge(read, record, 1e6)
        charts(read)
        operation_page.render(record, read, verdict)


# --- the store reads its files one way -----------------------------------------------------------


def test_store_drops_a_fifo_a_symlink_a_huge_file_and_a_renamed_trace(tmp_path):
    """Each is one log line and no trace, at once: a FIFO is never waited on."""
    store = TraceStore(str(tmp_path), count=10, max_bytes=2**30)
    ids = [f"{i:016x}" for i in range(5)]
    for trace_id in ids:
        store.add(trace(trace_id))
    folder = tmp_path / "traces"
    (folder / f"{ids[0]}.json").unlink()
    os.mkfifo(folder / f"{ids[0]}.json")
    (folder / f"{ids[1]}.json").unlink()
    (folder / f"{ids[1]}.json").symlink_to(folder / f"{ids[4]}.json")
    with open(folder / f"{ids[2]}.json", "r+b") as handle:
        handle.truncate(MAX_TRACE_BYTES + 1)
    (folder / f"{ids[4]}.json").replace(folder / f"{ids[3]}.json")  # the wrong id inside
    for trace_id in ids[:4]:
        assert store.get(trace_id) is None, trace_id
        assert trace_id not in store.ids()
        assert not (folder / f"{trace_id}.json").exists()


def test_store_without_a_directory_refuses_what_would_not_read_back(tmp_path, caplog):
    for directory in (str(tmp_path), ""):
        store = TraceStore(directory, count=10, max_bytes=2**20)
        bad = Trace("0123456789abcdef", "vm\nforged line", "s1", "create", 10.0, 10.2, 0.125,
                    "vda", (Point(10.0, 1, {}, {"qemu_write_bytes": float("inf")}),))
        store.add(bad)
        assert store.ids() == []
    assert "vm\\nforged line" in caplog.text and "vm\nforged" not in caplog.text


def test_one_entry_that_is_no_trace_hides_no_other_and_all_are_evicted(tmp_path):
    store = TraceStore(str(tmp_path), count=10, max_bytes=2**20)
    for i in range(4):
        store.add(trace(f"{i:016x}"))
    folder = tmp_path / "traces"
    (folder / ("x" * 250 + ".json")).write_text("{}")
    (folder / "fedcba9876543210.json").mkdir()
    (folder / "0123456789abcdee.json").symlink_to("/nonexistent")
    again = TraceStore(str(tmp_path), count=2, max_bytes=2**20)
    assert again.ids() == [f"{2:016x}", f"{3:016x}"]  # the two newest; 0 and 1 evicted
    assert sorted(p.name for p in folder.glob("000*")) == [f"{2:016x}.json", f"{3:016x}.json"]


def test_the_rings_sample_a_moment_before_the_first_traced_one_is_replaced_not_merged():
    """An operation's start wakes the sampler 0.02 s after the 1 Hz ring's last sample: that
    sample, which read no thread, gives way to the traced one, so each thread share is of
    samples that read the threads (merged, the point counted 2 samples and 1 main thread)."""
    builder = TraceBuilder()
    builder.add(Point(10.0, 1, {"dirty": 5}, {"qemu_write_bytes": 1.0}))
    builder.add(Point(10.02, 1, {"dirty": 6}, {"qemu_write_bytes": 2.0}, {"main:S:poll": 1}))
    builder.add(Point(10.03, 1, {"dirty": 7}, {"qemu_write_bytes": 3.0}, {"main:R:": 1}))
    (only,) = builder.points()
    assert only.n == 2 and sum(only.threads.values()) == 2  # traced samples merge as before
    assert only.gauges["dirty"] == 7 and only.counters["qemu_write_bytes"] == 3.0
