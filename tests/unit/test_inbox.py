"""The collection loop's inbox keeps libvirt's events in arrival order.

The loop used to wait on the queue itself, taking an event out and putting it back behind the
events that arrived meanwhile. On the recorded libvirt 11.3 sequence of a QEMU killed
mid-create that swap alone changes the failure's duration from 0.72 s to 2.72 s.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.inbox import Inbox
from libvirt_snapshot_exporter.observations import DomainPoll, from_record
from libvirt_snapshot_exporter.tracker import Tracker
from lse_devtools.replay import records, replay

SEQUENCES = sorted((Path(__file__).parent).glob("sequences*/*.jsonl"))


def test_events_leave_in_arrival_order_after_a_wait() -> None:
    inbox: Inbox[str] = Inbox()
    inbox.put("a")

    def later() -> None:
        time.sleep(0.05)
        inbox.put("b")
        inbox.put("c")

    thread = threading.Thread(target=later)
    thread.start()
    assert inbox.wait(5.0)
    thread.join()
    assert inbox.drain() == ["a", "b", "c"]
    assert inbox.drain() == []


def test_wait_times_out_and_wake_interrupts_it() -> None:
    inbox: Inbox[str] = Inbox()
    assert inbox.wait(0.05) is False
    threading.Timer(0.05, inbox.wake).start()
    started = time.monotonic()
    assert inbox.wait(10.0) is True
    assert time.monotonic() - started < 5.0
    assert inbox.drain() == []


def test_an_event_arriving_after_the_wait_wakes_the_next_one() -> None:
    inbox: Inbox[str] = Inbox()
    inbox.put("a")
    assert inbox.wait(1.0)
    inbox.put("b")  # while the loop's cycle runs
    assert inbox.drain() == ["a", "b"]
    assert inbox.wait(0.01)  # one spare wake-up, never a lost one


def _through_inbox(path: Path) -> list[tuple]:
    """The sequence as the loop sees it: events through the inbox, polls made by the loop."""
    inbox, tracker, ops = Inbox(), Tracker(), []
    for record in records(path):
        if record["type"] == "ClientCall":
            continue
        obs = from_record(record)
        if isinstance(obs, DomainPoll):
            inbox.wait(0)
            for event in inbox.drain():
                ops += tracker.observe(event)
            ops += tracker.observe(obs)
        else:
            inbox.put(obs)
    for event in inbox.drain():
        ops += tracker.observe(event)
    return [(o.operation, o.outcome, o.snapshot, round(o.duration, 3)) for o in ops]


@pytest.mark.parametrize("path", SEQUENCES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_recorded_sequence_gives_the_same_operations_through_the_inbox(path: Path) -> None:
    _, direct, _ = replay(path)
    assert _through_inbox(path) == [
        (o.operation, o.outcome, o.snapshot, round(o.duration, 3)) for o in direct]


def test_swapping_two_adjacent_events_changes_a_killed_create() -> None:
    """Why order matters: the failure ends at SUSPENDED/API_ERROR, seconds before STOPPED."""
    path = Path(__file__).parent / "sequences-libvirt11" / "killed_mid_create.jsonl"
    recorded = records(path)
    _, (kept,), _ = replay(path)
    i = next(n for n, r in enumerate(recorded)
             if r["type"] == "LifecycleEvent" and recorded[n + 1]["type"] == "LifecycleEvent")
    recorded[i], recorded[i + 1] = recorded[i + 1], recorded[i]
    tracker, ops = Tracker(), []
    for record in recorded:
        if record["type"] != "ClientCall":
            ops += tracker.observe(from_record(record))
    (swapped,) = ops
    assert kept.outcome == swapped.outcome == "failure"
    assert kept.duration == pytest.approx(0.72, abs=0.01)
    assert swapped.duration == pytest.approx(2.72, abs=0.01)
