"""Domain and snapshot names are anyone's input (libvirt takes a newline in a snapshot's name):
where they reach the exporter's log they are escaped, so a name cannot forge log lines."""

from __future__ import annotations

import logging

import pytest
from libvirt_snapshot_exporter.loop.context_keeper import ContextKeeper
from libvirt_snapshot_exporter.loop.domain_cache import DomainCache
from libvirt_snapshot_exporter.loop.handoff import OperationHandoff
from libvirt_snapshot_exporter.model.printable import printable
from libvirt_snapshot_exporter.store.oplog import OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from libvirt_snapshot_exporter.tracker.tracker import Operation

FORGED = "s1\n2026-12-06 18:00:00 ERROR libvirt_snapshot_exporter: forged"


@pytest.mark.parametrize("name, shown", [
    ("vm1", "vm1"), ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),  # printable: as is
    ("a\nb\rc\td", "a\\nb\\rc\\td"), ("\x1b[31mred", "\\x1b[31mred"), ("a\\nb", "a\\\\nb"),
    ("x\u2028y\x85z\x7f", "x\\u2028y\\x85z\\x7f"),
])
def test_printable_escapes_what_breaks_a_line_and_nothing_else(name, shown):
    assert printable(name) == shown and "\n" not in printable(name)


def test_a_finished_operation_is_logged_on_one_line(caplog):
    caplog.set_level(logging.INFO)
    store = StateStore(View.initial("test:///default"))
    handoff = OperationHandoff(ContextKeeper(), OperationsLog(None), store, None)
    op = Operation("vm\n1", "create", 1_800_000_000.0, "control", 0.0, snapshot=FORGED,
                   end=1_800_000_001.0, end_source="event", outcome="success")
    handoff.begun(op, DomainCache())
    handoff.finished(op, DomainCache(), "7.2.0")
    (line,) = [r.getMessage() for r in caplog.records if "create of" in r.getMessage()]
    assert "\n" not in line and "create of vm\\n1/s1\\n2026-12-06 18:00:00 ERROR" in line
