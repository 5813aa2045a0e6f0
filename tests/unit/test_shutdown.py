"""CollectionLoop.stop() is bounded and writes the log whatever libvirtd does: here a libvirtd that
accepts the connection and never answers, so the connect call never returns."""

from __future__ import annotations

import json
import time

from libvirt_snapshot_exporter.config import build
from libvirt_snapshot_exporter.loop.loop import STOP_WAIT, CollectionLoop
from libvirt_snapshot_exporter.model.operation import FinishedOperation
from libvirt_snapshot_exporter.store.oplog import LOG_NAME, OperationsLog
from libvirt_snapshot_exporter.store.view import StateStore, View
from lse_devtools.silent_libvirtd import SilentLibvirtd

ENTRY = FinishedOperation(domain="vm1", snapshot="s1", operation="create", kind="internal",
                          memory=True, start=1700000000.0, end=1700000040.5,
                          duration_seconds=40.5, outcome="success")


def test_stop_writes_the_log_within_bounds_while_connect_hangs(tmp_path):
    silent = SilentLibvirtd(tmp_path / "sock")
    silent.start()
    config = build({"libvirt_uri": f"qemu+unix:///system?socket={tmp_path / 'sock'}",
                    "libvirt_timeout": 60.0, "state_directory": str(tmp_path / "state")}, None)
    oplog = OperationsLog(config["state.directory"])
    store = StateStore(View.initial(config["libvirt.uri"]))
    loop = CollectionLoop(config, store, oplog)
    stopped = False
    try:
        loop.start()
        deadline = time.monotonic() + 15
        while not silent.accepted and time.monotonic() < deadline:
            time.sleep(0.1)
        assert silent.accepted, "the loop never connected"
        time.sleep(1)  # the loop is now inside a connect that waits up to 60 s
        oplog.add(ENTRY)
        started = time.monotonic()
        loop.stop()
        stopped = True
        took = time.monotonic() - started
        assert took < STOP_WAIT + 5, took
        written = (tmp_path / "state" / LOG_NAME).read_text().splitlines()
        assert [json.loads(line)["snapshot"] for line in written] == ["s1"]
    finally:
        if not stopped:
            loop.stop()
        silent.close()  # the hung connect gets end of file and its worker returns
