"""The tracker on recorded sequences that hold libvirt's snapshot file events and status saves
(scripts/record-sequences.py with the metadata watch beside the adapter), on both libvirts:
as recorded, with polls thinned to what an idle exporter makes, and with file events fed late."""

from __future__ import annotations

from pathlib import Path

import pytest
from libvirt_snapshot_exporter.observations import from_record
from libvirt_snapshot_exporter.tracker import Operation, Tracker
from lse_devtools.replay import assert_matches_client, records

UNIT = Path(__file__).parent
FILES = ("SnapshotFileEvent", "DomainStatusSaved")
SEQUENCES = sorted(
    path for directory in ("sequences", "sequences-libvirt11")
    for path in (UNIT / directory).glob("*.jsonl")
    if any(r["type"] == "SnapshotFileEvent" for r in records(path))
)
EXACT = 0.02  # seconds: a file event is stamped within ~5 ms of the call's return (measured)


def run(lines: list[dict]) -> tuple[list[dict], list[Operation], Tracker]:
    calls, ops, tracker = [], [], Tracker()
    for record in lines:
        if record["type"] == "ClientCall":
            calls.append(record)
        else:
            ops += tracker.observe(from_record(record))
    return calls, ops, tracker


def thinned(lines: list[dict], interval: float = 1.0) -> list[dict]:
    """Polls every interval, plus the first one after each file event (the exporter polls a
    domain at once when its file changes); lifecycle events and status saves wake nothing here,
    so ends and delete starts come from the files alone."""
    kept, last, woken = [], -1e18, False
    for record in lines:
        if record["type"] in ("DomainPoll", "DomainUnchanged"):
            if woken or record["time"] - last >= interval:
                kept.append(record)
                last, woken = record["time"], False
            continue
        woken |= record["type"] == "SnapshotFileEvent"
        kept.append(record)
    return kept


def late(lines: list[dict]) -> list[dict]:
    """Each file event and status save fed after the poll that follows it (a poll answered
    before the inotify thread's event reached the loop)."""
    out, held = [], []
    for record in lines:
        if record["type"] in FILES:
            held.append(record)
            continue
        out.append(record)
        if record["type"] == "DomainPoll":
            out += held
            held = []
    return out + held


def check_exact_ends(calls: list[dict], ops: list[Operation]) -> None:
    for call, op in zip(calls, ops, strict=True):
        if op.end_source == "metadata":
            assert abs(op.end - call["end"]) <= EXACT, (call, op)
        if op.start_source == "status":
            assert abs(op.start - call["start"]) <= EXACT, (call, op)


@pytest.mark.parametrize("path", SEQUENCES, ids=lambda p: f"{p.parent.name}/{p.stem}")
@pytest.mark.parametrize("feed", [list, thinned, late], ids=["recorded", "thinned", "late"])
def test_every_operation_and_exact_ends(path: Path, feed) -> None:
    calls, ops, tracker = run(feed(records(path)))
    assert_matches_client(calls, ops)
    check_exact_ends(calls, ops)
    assert tracker.in_flight() == []
    ok = [(c, o) for c, o in zip(calls, ops, strict=True) if c["ok"]]
    # Every successful operation that keeps metadata ends on its file (or an exact event).
    assert all(o.end_source in ("metadata", "event") for _, o in ok), ops


@pytest.mark.parametrize("path", [p for p in SEQUENCES if "delete" in p.stem or "quick" in p.stem],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_deletes_no_poll_caught_are_timed_from_the_files(path: Path) -> None:
    calls, ops, _ = run(thinned(records(path), interval=5.0))
    deletes = [(c, o) for c, o in zip(calls, ops, strict=True) if o.operation == "delete"]
    assert deletes
    for call, op in deletes:
        assert op.end_source == "metadata"
        assert abs(op.duration - (call["end"] - call["start"])) <= 2 * EXACT, (call, op)
