"""Replaying a recorded observation sequence through the tracker, and checking the operations
it finds against the client's own calls recorded beside the observations."""

from __future__ import annotations

import json
from pathlib import Path

from libvirt_snapshot_exporter.model.observations import from_record
from libvirt_snapshot_exporter.tracker.tracker import Operation, Tracker


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def replay(path: Path) -> tuple[list[dict], list[Operation], Tracker]:
    """(client calls, operations the tracker finished, the tracker) for one sequence file."""
    calls, ops, tracker = [], [], Tracker()
    for record in records(path):
        if record["type"] == "ClientCall":
            calls.append(record)
        else:
            ops += tracker.observe(from_record(record))
    return calls, ops, tracker


def assert_matches_client(calls: list[dict], ops: list[Operation], tolerance: float = 0.5) -> None:
    """One operation per client call, of the same type and outcome, timed within tolerance
    (or within the bracket the tracker itself reports when it saw neither start nor end)."""
    assert [o.operation for o in ops] == [c["operation"] for c in calls]
    for call, op in zip(calls, ops, strict=True):
        assert op.outcome == ("success" if call["ok"] else "failure"), (call, op)
        wall = call["end"] - call["start"]
        slack = tolerance + op.start_uncertainty + op.end_uncertainty
        assert abs(op.duration - wall) <= slack, (call, op)
