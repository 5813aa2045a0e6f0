"""Calls handled once they answer: in this cycle when they do at once, in a later one when
they do not, never twice, and a handler that raises fails its own source only."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest
from libvirt_snapshot_exporter.loop.source_health import LaterCalls, SourceHealth
from libvirt_snapshot_exporter.sources.libvirt.calls import Deadlines, LibvirtUnavailable


def answered(value: object) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_result(value)
    return future


def test_an_answer_is_handled_once_in_the_cycle_it_came():
    later, handled = LaterCalls(SourceHealth()), []
    later.start("states", lambda: answered({"vm1": (1, 1)}), lambda f: handled.append(f.result()),
                "domains")
    assert later.calls_out
    later.finish(0.0)
    later.finish(0.0)
    assert handled == [{"vm1": (1, 1)}] and not later.calls_out


def test_a_call_that_has_not_answered_waits_for_a_later_cycle_and_is_not_made_twice():
    later, handled, made = LaterCalls(SourceHealth()), [], []
    pending: concurrent.futures.Future = concurrent.futures.Future()

    def submit() -> concurrent.futures.Future:
        made.append(1)
        return pending

    later.start("bulk_stats", submit, lambda f: handled.append(f.result()), "guests")
    later.finish(0.01)
    later.start("bulk_stats", submit, lambda f: handled.append(f.result()), "guests")
    assert handled == [] and made == [1] and later.calls_out
    pending.set_result("stats")
    later.finish(0.0)
    assert handled == ["stats"]


def test_a_handler_that_raises_fails_its_source():
    health = SourceHealth()
    later = LaterCalls(health)
    later.start("xml:vm1", lambda: answered("<domain/>"), lambda f: 1 / 0, "domains")
    later.finish(0.0)
    assert health.statuses()["domains"].success is False and not later.calls_out


def test_a_call_that_cannot_start_is_not_out():
    def busy() -> concurrent.futures.Future:
        raise LibvirtUnavailable("an earlier call of this key still runs")

    later = LaterCalls(SourceHealth())
    later.start("states", busy, lambda f: None, "domains")
    assert not later.calls_out


def test_clear_forgets_the_calls_of_an_old_connection():
    later, handled = LaterCalls(SourceHealth()), []
    later.start("states", lambda: answered(1), handled.append, "domains")
    later.clear()
    later.finish(0.0)
    assert handled == [] and not later.calls_out


def test_deadlines_refuse_a_key_while_its_call_runs_and_forget_it_once_returned():
    deadlines, release = Deadlines(workers=1), threading.Event()
    running = deadlines.submit("poll:vm1", release.wait)
    with pytest.raises(LibvirtUnavailable):
        deadlines.submit("poll:vm1", lambda: None)
    release.set()
    assert running.result(5) is True
    again = deadlines.submit("poll:vm1", lambda: "answer")  # the key is free again
    assert again.result(5) == "answer"
    deadline = time.monotonic() + 5  # the callback runs on the worker, just after the result
    while deadlines._pending and time.monotonic() < deadline:
        time.sleep(0.001)
    assert deadlines._pending == {}  # nothing kept per domain once its calls returned
