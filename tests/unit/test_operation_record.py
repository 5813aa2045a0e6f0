"""An operation's record and progress, from operations the tracker found in recorded
sequences and contexts fed with samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.loop.handoff import finished_operation, in_flight, progress_estimate
from libvirt_snapshot_exporter.model.context import OperationContext
from libvirt_snapshot_exporter.model.operation import FinishedOperation, InvalidRecord, operation_id
from libvirt_snapshot_exporter.model.samples import HostSample, ProcessSample
from lse_devtools.replay import replay

SEQUENCES = Path(__file__).parent / "sequences"


def _context(written: int | None, used: int | None) -> OperationContext:
    ctx = OperationContext(guest_memory_used_bytes=used)
    if written is not None:
        ctx.add_process(ProcessSample(1, 1, 0, 1000, "proc_io"))
        ctx.add_process(ProcessSample(1, 1, 0, 1000 + written, "proc_io"))
    return ctx


@pytest.mark.parametrize("sequence", sorted(p.stem for p in SEQUENCES.glob("*.jsonl")))
def test_every_recorded_operation_gives_a_record_the_log_reads_back(sequence: str) -> None:
    _, ops, _ = replay(SEQUENCES / f"{sequence}.jsonl")
    for op in ops:
        record = finished_operation(op, _context(4096, None), "7.2.0", ("none",))
        assert FinishedOperation.from_json(record.to_json()) == record  # nothing dropped
        assert record.duration_seconds == round(op.duration, 3)
        assert record.end >= record.start


def test_the_record_holds_every_context_figure() -> None:
    """A figure model/context.py adds must have a field here, or it would be lost."""
    ctx = OperationContext(guest_memory_used_bytes=1, guest_memory_total_bytes=2, guest_cpu_ratio=0.5)
    for t in (1.0, 2.0):
        ctx.add_host(HostSample(t, {"available": 5, "free": 4, "cached": 3, "dirty": 2, "writeback": 1},
                                pressure={"memory_some": t, "io_some": t}))
        ctx.add_process(ProcessSample(7, 10, 0, int(t * 100), "proc_io"))
    context = set(ctx.public())
    assert len(context) == 13
    assert context <= {f.name for f in dataclasses.fields(FinishedOperation)}


def test_entry_carries_the_write_rate_over_the_operation() -> None:
    _, (op, *_), _ = replay(SEQUENCES / "internal_chain_running.jsonl")
    record = finished_operation(op, _context(10_000_000, None), "7.2.0", ("writeback",))
    assert record.qemu_written_bytes == 10_000_000
    assert record.qemu_write_rate_bytes_per_second == round(10_000_000 / op.duration)
    assert record.to_json()["disk_cache"] == ["writeback"] and record.qemu_version == "7.2.0"


def test_progress_is_bytes_written_over_guest_memory_for_internal_memory_creates() -> None:
    _, ops, _ = replay(SEQUENCES / "internal_chain_running.jsonl")
    create = next(o for o in ops if o.operation == "create" and o.memory)
    assert progress_estimate(create, _context(256, 1024)) == 0.25
    assert progress_estimate(create, _context(4096, 1024)) == 1.0  # capped
    assert progress_estimate(create, _context(None, 1024)) is None
    assert progress_estimate(create, _context(256, None)) is None
    assert progress_estimate(create, None) is None
    other = next(o for o in ops if o.operation != "create")
    assert progress_estimate(other, _context(256, 1024)) is None


def test_one_id_from_the_moment_the_tracker_sees_an_operation() -> None:
    """In flight, in the log, in the trace's name and the page's URL: the tracker's id; an
    entry logged without one (older exporters) gets the id they derived from it."""
    _, (op, *_), _ = replay(SEQUENCES / "internal_chain_running.jsonl")
    record = finished_operation(op, _context(None, None), "7.2.0", ())
    assert record.id == op.id == in_flight(op, None).id and len(op.id) == 16
    assert record.to_json()["id"] == op.id
    assert FinishedOperation.from_json(record.to_json()).id == op.id
    old = {k: v for k, v in record.to_json().items() if k != "id"}
    assert FinishedOperation.from_json(old).id == operation_id(
        record.domain, record.snapshot, record.operation, record.start)
    with pytest.raises(InvalidRecord, match="bad 'id'"):
        FinishedOperation.from_json({**record.to_json(), "id": "../../etc"})


GOOD = {
    "domain": "vm1", "snapshot": "s1", "operation": "create", "kind": "internal",
    "memory": True, "start": 1700000000.0, "end": 1700000040.5, "duration_seconds": 40.5,
    "outcome": "success",
}
MIXED = {"pace_setter": "mixed", "expected_seconds": 9.7, "slowdown": 3.1,
         "shares": {"storage-slow": 0.5, "cpu": 0.45}, "present": [], "figures": {},
         "model": "written"}


@pytest.mark.parametrize("change", [
    {"qemu_written_bytes": 10**400}, {"qemu_written_bytes": 2**63}, {"guest_cpu_ratio": 1e300},
    {"guest_cpu_ratio": float("inf")}, {"guest_cpu_ratio": float("nan")},
    {"duration_seconds": 1e-300}, {"duration_seconds": 5e-7},
    {"verdict": {**MIXED, "shares": {"storage-slow": 0.9}}},  # mixed, of one cause
    {"verdict": {**MIXED, "shares": {}}},
    {"verdict": {**MIXED, "figures": {"write_rate_bytes_per_second": float("inf")}}},
    {"verdict": {**MIXED, "slowdown": 1e300}},
])
def test_figures_not_finite_or_absurd_are_refused(change) -> None:
    """What made rates infinite (a duration of 1e-300 s), tracebacks (a 400-digit integer),
    and a page 500 (a 'mixed' verdict with one share)."""
    with pytest.raises(InvalidRecord):
        FinishedOperation.from_json({**GOOD, **change})


def test_figures_at_their_bounds_are_kept() -> None:
    for change in ({"duration_seconds": 0}, {"duration_seconds": 1e-6},
                   {"qemu_written_bytes": 2**62}, {"verdict": MIXED}):
        assert FinishedOperation.from_json({**GOOD, **change}).checked()


def test_checked_says_whether_a_record_reads_back() -> None:
    record = FinishedOperation.from_json(GOOD)
    assert record.checked() == record
    with pytest.raises(InvalidRecord, match="guest_cpu_ratio"):
        dataclasses.replace(record, guest_cpu_ratio=float("inf")).checked()


def test_the_openstack_instance_name_is_kept_with_the_operation() -> None:
    """The name its domain's Nova metadata gave as it ended (handoff: the domain's cache), read
    back from the log; an entry without it (older, or no OpenStack domain) reads as None; one
    of another type is refused."""
    _, (op, *_), _ = replay(SEQUENCES / "internal_chain_running.jsonl")
    record = finished_operation(op, _context(None, None), "7.2.0", (), "web-1")
    assert FinishedOperation.from_json(record.to_json()).instance_name == "web-1"
    older = {k: v for k, v in record.to_json().items() if k != "instance_name"}
    assert FinishedOperation.from_json(older).instance_name is None
    with pytest.raises(InvalidRecord, match="bad 'instance_name'"):
        FinishedOperation.from_json({**older, "instance_name": ["web-1"]})
