"""The collection loop's inbox keeps libvirt's events in arrival order, and feeds a poll's
answer between the events stamped before it and those stamped after it.

The loop used to wait on the queue itself, taking an event out and putting it back behind the
events that arrived meanwhile. On the recorded libvirt 11.3 sequence of a QEMU killed
mid-create that swap alone changes the failure's duration from 0.72 s to 2.72 s.

A poll is answered on a worker and collected a little later, when events on both sides of it
may be queued. The replays below deliver every poll's answer late, the way the loop meets it,
and check that the merge by time finds what the recorded order finds, where both simpler rules
(the poll first, or every queued event first) do not.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
from libvirt_snapshot_exporter.loop.inbox import Inbox
from libvirt_snapshot_exporter.model.observations import DomainPoll, LifecycleEvent, from_record
from libvirt_snapshot_exporter.tracker.tracker import Tracker
from lse_devtools.replay import records, replay

SEQUENCES = sorted((Path(__file__).parent).glob("sequences*/*.jsonl"))


def _event(t: float, event: int = 0) -> LifecycleEvent:
    return LifecycleEvent(t, "vm", event, 0)


def test_events_leave_in_arrival_order_after_a_wait() -> None:
    inbox: Inbox[LifecycleEvent] = Inbox()
    inbox.put(_event(1.0))

    def later() -> None:
        time.sleep(0.05)
        inbox.put(_event(2.0))
        inbox.put(_event(3.0))

    thread = threading.Thread(target=later)
    thread.start()
    assert inbox.wait(5.0)
    thread.join()
    assert [e.time for e in inbox.drain_until()] == [1.0, 2.0, 3.0]
    assert inbox.drain_until() == []


def test_wait_times_out_and_wake_interrupts_it() -> None:
    inbox: Inbox[LifecycleEvent] = Inbox()
    assert inbox.wait(0.05) is False
    threading.Timer(0.05, inbox.wake).start()
    started = time.monotonic()
    assert inbox.wait(10.0) is True
    assert time.monotonic() - started < 5.0
    assert inbox.drain_until() == []


def test_an_event_arriving_after_the_wait_wakes_the_next_one() -> None:
    inbox: Inbox[LifecycleEvent] = Inbox()
    inbox.put(_event(1.0))
    assert inbox.wait(1.0)
    inbox.put(_event(2.0))  # while the loop's cycle runs
    assert [e.time for e in inbox.drain_until()] == [1.0, 2.0]
    assert inbox.wait(0.01)  # one spare wake-up, never a lost one


def test_drain_until_takes_the_earlier_items_and_keeps_the_later_in_order() -> None:
    inbox: Inbox[LifecycleEvent] = Inbox()
    for t, event in ((1.0, 3), (2.0, 4), (3.0, 3), (2.5, 5), (4.0, 4)):
        inbox.put(_event(t, event))
    # 2.5 came after 3.0 from another thread: it is earlier than the poll, so it goes first.
    assert [(e.time, e.event) for e in inbox.drain_until(2.5)] == [(1.0, 3), (2.0, 4), (2.5, 5)]
    assert [e.time for e in inbox.drain_until(2.9)] == []
    assert [e.time for e in inbox.drain_until()] == [3.0, 4.0]


def _through_inbox(path: Path) -> list[tuple]:
    """The sequence as the loop sees it: events through the inbox, polls made by the loop."""
    inbox, tracker, ops = Inbox(), Tracker(), []
    for record in records(path):
        if record["type"] == "ClientCall":
            continue
        obs = from_record(record)
        if isinstance(obs, DomainPoll):
            inbox.wait(0)
            for event in inbox.drain_until():
                ops += tracker.observe(event)
            ops += tracker.observe(obs)
        else:
            inbox.put(obs)
    for event in inbox.drain_until():
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


def _summary(ops: list) -> list[tuple]:
    return [(o.operation, o.outcome, o.snapshot, round(o.duration, 3), round(o.paused_seconds, 3))
            for o in ops]


def _polls_answered_late(path: Path, late: float, rule: str) -> list[tuple]:
    """The sequence as the loop meets it when each poll's answer is collected `late` seconds
    after it looked: by then every event up to that moment is queued. `rule` says what is fed
    before the answer: "merge" (the loop's: the events stamped before it), "all" (every queued
    event) or "none" (the answer first)."""
    deliveries = []
    for record in records(path):
        if record["type"] != "ClientCall":
            obs = from_record(record)
            deliveries.append((obs.time + (late if isinstance(obs, DomainPoll) else 0.0), obs))
    deliveries.sort(key=lambda d: d[0])
    inbox, tracker, ops = Inbox(), Tracker(), []
    for _, obs in deliveries:
        if not isinstance(obs, DomainPoll):
            inbox.put(obs)
            continue
        before = {"merge": obs.time, "all": math.inf, "none": -math.inf}[rule]
        for event in inbox.drain_until(before):
            ops += tracker.observe(event)
        ops += tracker.observe(obs)
    for event in inbox.drain_until():
        ops += tracker.observe(event)
    return _summary(ops)


LATE = (0.05, 0.3, 1.0)  # a worker's answer collected in the same cycle, the next, seconds later


@pytest.mark.parametrize("late", LATE)
@pytest.mark.parametrize("path", SEQUENCES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_polls_answered_late_give_the_recorded_operations(path: Path, late: float) -> None:
    _, direct, _ = replay(path)
    assert _polls_answered_late(path, late, "merge") == _summary(direct)


@pytest.mark.parametrize("rule", ["all", "none"])
def test_both_simpler_rules_get_some_recorded_sequence_wrong(rule: str) -> None:
    """The replay above can fail: with the poll fed first, or every queued event first, some
    recorded sequence gives other operations (other outcomes, durations or pauses)."""
    wrong = [
        (path.parent.name, path.stem, late) for path in SEQUENCES for late in LATE
        if _polls_answered_late(path, late, rule) != _summary(replay(path)[1])]
    assert wrong, f"rule {rule!r} finds the recorded operations everywhere"
