"""Each source's health: a step that raises fails that source alone, for the rest of its cycle,
with one log line until it works again."""

from __future__ import annotations

import logging

from libvirt_snapshot_exporter.loop.source_health import SourceHealth


def fail() -> None:
    raise ValueError("bad figures")


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_failing_step_fails_its_source_alone_and_the_cycle_goes_on():
    health = SourceHealth()
    ran = []
    health.run("host", fail)
    health.run("domains", lambda: ran.append("domains"))
    health.mark("domains", True, 0.01)
    statuses = health.statuses()
    assert ran == ["domains"]
    assert statuses["host"].success is False and statuses["host"].last_success is None
    assert statuses["domains"].success is True and statuses["domains"].duration == 0.01


def test_a_failure_stands_for_the_rest_of_its_cycle():
    health = SourceHealth()
    health.run("qemu_process", fail)  # one domain's process
    health.mark("qemu_process", True, 0.5)  # the step over all domains ends
    assert health.statuses()["qemu_process"].success is False
    health.new_cycle()
    health.mark("qemu_process", True, 0.5)
    assert health.statuses()["qemu_process"].success is True


def test_one_log_line_until_it_works_again(caplog):
    caplog.set_level(logging.INFO)
    health = SourceHealth()
    for _ in range(3):
        health.new_cycle()
        health.run("host", fail)
    assert errors(caplog) == ["collector host failed: ValueError: bad figures "
                              "(logged once until it recovers)"]
    health.new_cycle()
    health.mark("host", True, 0.0)
    assert "collector host works again" in caplog.messages
    health.new_cycle()
    health.run("host", fail)
    assert len(errors(caplog)) == 2


def test_last_success_outlives_a_failure():
    health = SourceHealth()
    health.mark("guests", True, 0.1)
    first = health.statuses()["guests"].last_success
    health.new_cycle()
    health.mark("guests", False, 0.2)
    status = health.statuses()["guests"]
    assert status.success is False and status.last_success == first is not None


def test_statuses_are_a_copy():
    health = SourceHealth()
    health.mark("host", True, 0.0)
    published = health.statuses()
    health.mark("images", True, 0.0)
    assert list(published) == ["host"]
