"""Which domains are polled and how: the decisions (pure), then rounds against libvirt's test
driver in this process, `now` moved on by hand to make the idle checks due."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from libvirt_snapshot_exporter.config import build
from libvirt_snapshot_exporter.loop.domain_cache import DomainCache, LoopParts
from libvirt_snapshot_exporter.loop.domain_polls import (
    CHECK_ROUNDS,
    DomainPolls,
    check_due,
    check_interval,
    check_saw_change,
    due_call,
)
from libvirt_snapshot_exporter.model.observations import (
    CONTROL_JOB,
    CONTROL_OK,
    DomainGone,
    DomainPoll,
    DomainUnchanged,
    Observation,
    SnapshotRecord,
)
from libvirt_snapshot_exporter.sources.libvirt.adapter import LibvirtAdapter
from lse_devtools.test_driver import URI, running_guest, snapshot

NOW = 1_800_000_000.0
RUNNING = (1, 1)


def polled_cache(snapshots: int = 0) -> DomainCache:
    cache = DomainCache(state=RUNNING, next_check=NOW + 1, next_resync=NOW + 60)
    cache.poll = DomainPoll(NOW, "vm1", "u", *RUNNING, CONTROL_OK, 0, tuple(
        SnapshotRecord(f"s{i}", None, NOW, "running", True, "internal", False)
        for i in range(snapshots)))
    return cache


@pytest.mark.parametrize(("why", "cache", "state", "now", "woken", "busy", "call"), [
    ("never polled", DomainCache(), RUNNING, NOW, False, False, "poll"),
    ("an event named it", polled_cache(), RUNNING, NOW, True, False, "poll"),
    ("its state changed", polled_cache(), (3, 9), NOW, False, False, "poll"),
    ("the periodic resync", polled_cache(), RUNNING, NOW + 60, False, False, "poll"),
    ("in flight and due", polled_cache(), RUNNING, NOW + 1, False, True, "poll"),
    ("in flight, not due", polled_cache(), RUNNING, NOW + 0.5, False, True, None),
    ("idle and due", polled_cache(), RUNNING, NOW + 1, False, False, "check"),
    ("idle, not due", polled_cache(), RUNNING, NOW + 0.5, False, False, None),
])
def test_due_call(why, cache, state, now, woken, busy, call):
    assert due_call(cache, state, now, woken, busy) == call, why


def test_a_check_sees_a_change_in_a_job_a_count_or_an_operation_in_flight():
    assert not check_saw_change(polled_cache(2), CONTROL_OK, 2, busy=False)
    assert check_saw_change(polled_cache(2), CONTROL_JOB, 2, busy=False)
    assert check_saw_change(polled_cache(2), CONTROL_OK, 1, busy=False)
    assert check_saw_change(polled_cache(2), CONTROL_OK, 2, busy=True)
    assert check_saw_change(DomainCache(), CONTROL_OK, 0, busy=False)


def test_the_idle_check_interval_grows_to_stay_within_the_call_budget():
    assert check_interval(1.0, 20, 200) == 1.0
    assert check_interval(1.0, 1000, 200) == 10.0  # 2 calls each: 200 calls a second


def test_idle_checks_spread_over_the_interval_share_its_rounds():
    now, interval = 1796580000.0, 10.0  # 1,000 domains' interval
    wanted = [now + interval + i / 100 for i in range(1000)]  # one every 10 ms
    due = [check_due(at, interval) for at in wanted]
    assert all(at <= when < at + interval / CHECK_ROUNDS for at, when in zip(wanted, due,
                                                                              strict=True))
    assert len(set(due)) <= CHECK_ROUNDS + 1


class Round:
    """DomainPolls on the test driver, with what it fed and what it dropped."""

    def __init__(self) -> None:
        self.adapter = LibvirtAdapter(URI, lambda _obs: None)
        self.fed: list[Observation] = []
        self.gone: list[str] = []
        parts = LoopParts.on(self.adapter)
        self.health, self.domains = parts.health, parts.domains
        self.polls = DomainPolls(parts, build({"libvirt_uri": URI}, None), self.fed.append,
                                 self.gone.append)

    def of(self, name: str) -> list[Observation]:
        return [o for o in self.fed if o.domain == name]


@pytest.fixture
def rounds() -> Iterator[Round]:
    r = Round()
    assert r.adapter.ensure_connected()
    yield r
    r.adapter.close()


def test_a_new_domain_is_polled_in_full_then_only_checked_when_due(rounds):
    with running_guest() as dom:
        now = time.time()
        rounds.polls.poll(now)
        (first,) = rounds.of(dom.name())
        assert isinstance(first, DomainPoll) and first.state == 1 and first.uuid == dom.UUIDString()
        assert rounds.health.statuses()["domains"].success
        rounds.polls.poll(now + 0.01)
        assert rounds.of(dom.name()) == [first]  # nothing due, nothing asked
        rounds.polls.poll(now + 5)
        assert [type(o) for o in rounds.of(dom.name())] == [DomainPoll, DomainUnchanged]
        assert not rounds.polls.calls_out


def test_a_check_that_counts_another_snapshot_polls_in_full(rounds):
    with running_guest() as dom:
        now = time.time()
        rounds.polls.poll(now)
        snapshot(dom, "s1")
        rounds.polls.poll(now + 5)
        rounds.polls.poll(now + 5.01)  # the full poll the check started may answer only now
        polled = rounds.of(dom.name())[1]  # after the first poll, before any check
        assert isinstance(polled, DomainPoll) and [s.name for s in polled.snapshots] == ["s1"]


def test_a_domain_an_event_names_is_polled_at_once(rounds):
    with running_guest() as dom:
        now = time.time()
        rounds.polls.poll(now)
        dom.suspend()
        rounds.polls.wake(dom.name())
        rounds.polls.poll(now + 0.01)
        first, *after = [o.state for o in rounds.of(dom.name())]
        assert first == 1 and after and set(after) == {3}


def test_a_domain_that_vanishes_is_gone_and_forgotten(rounds):
    with running_guest() as dom:
        name = dom.name()
        now = time.time()
        rounds.polls.poll(now)
        dom.destroy()
        dom.undefine()
        rounds.polls.wake(name)  # its UNDEFINED event, as the loop passes it on
        rounds.polls.poll(now + 0.01)
        assert isinstance(rounds.of(name)[-1], DomainGone)
        assert rounds.gone == [name] and name not in rounds.domains


def test_without_a_connection_the_domains_source_fails():
    r = Round()  # never connected
    r.polls.poll(time.time())
    assert r.fed == [] and r.health.statuses()["domains"].success is False


def test_a_reset_polls_every_domain_afresh(rounds):
    with running_guest() as dom:
        now = time.time()
        rounds.polls.poll(now)
        rounds.polls.reset()
        assert rounds.domains[dom.name()].poll is None
        rounds.polls.poll(now + 0.01)
        assert [type(o) for o in rounds.of(dom.name())] == [DomainPoll, DomainPoll]


def test_a_poll_keeps_the_records_of_its_own_domain_snapshots_only(rounds):
    with running_guest() as dom, running_guest() as other:
        snapshot(dom, "s1")
        deleted = snapshot(dom, "s2")
        snapshot(other, "o1")
        now = time.time()
        rounds.polls.poll(now)
        cache = rounds.adapter._snapshot_cache
        first = rounds.of(other.name())[0].snapshots
        deleted.delete()
        rounds.polls.wake(dom.name())
        rounds.polls.wake(other.name())
        rounds.polls.poll(now + 0.01)
        assert [s.name for s in rounds.of(dom.name())[-1].snapshots] == ["s1"]
        assert list(cache[dom.name()]) == ["s1"] and list(cache[other.name()]) == ["o1"]
        polls = [o for o in rounds.of(other.name()) if isinstance(o, DomainPoll)]
        assert len(polls) >= 2 and polls[-1].snapshots[0] is first[0]  # parsed once
