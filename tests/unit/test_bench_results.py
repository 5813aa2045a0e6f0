"""bench's pure parts: the settings it compares, an operation's figures and verdict from its
trace, the study's table with the verdicts, the comparison table, the CSV row, the domain XML
with another cache mode."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from libvirt_snapshot_exporter.bench import comparison, recording
from libvirt_snapshot_exporter.bench.cache_mode import with_cache
from libvirt_snapshot_exporter.bench.control import GuestReading
from libvirt_snapshot_exporter.bench.report import OperationRecord, RunInfo, row, table
from libvirt_snapshot_exporter.bench.settings import Setting, cache_modes, kinds, settings
from libvirt_snapshot_exporter.model.operation import FinishedOperation, Verdict
from libvirt_snapshot_exporter.sources.libvirt.common import parse_domain_disks
from libvirt_snapshot_exporter.verdict.keeper import completed
from lse_devtools import handbuilt_trace

MIB = 2**20
INTERNAL = Setting("internal", False, None)


def test_settings_cache_modes_outermost_live_for_external_only():
    assert kinds("internal,external") == ["internal", "external"]
    assert cache_modes(" none , unsafe") == ["none", "unsafe"]
    for parse, text in ((kinds, "internal,internal"), (kinds, "inner"), (cache_modes, "fast"),
                        (cache_modes, "")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert settings(["internal", "external"], ["none", "writeback"], live=True) == [
        Setting("internal", False, "none"), Setting("external", True, "none"),
        Setting("internal", False, "writeback"), Setting("external", True, "writeback")]
    assert settings(["disk-only"], None, live=False) == [Setting("disk-only", False, None)]
    assert Setting("external", True, None).label(offline=False) == "external --live"
    assert Setting("internal", False, None).label(offline=True) == "internal (shut off)"


DOMAIN_XML = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback'/>
      <source file='/images/vm.qcow2'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <source file='/images/vm-data.qcow2'/><target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='/images/boot.iso'/><target dev='hdc'/>
    </disk>
  </devices>
  <qemu:commandline><qemu:arg value='-trace'/></qemu:commandline>
</domain>"""


def test_with_cache_sets_every_disk_and_keeps_the_rest():
    changed = with_cache(DOMAIN_XML, "none")
    assert [(d.target, d.cache) for d in parse_domain_disks(changed)] == [
        ("vda", "none"), ("vdb", "none")]
    root = ET.fromstring(changed)
    assert root.find("devices/disk[@device='cdrom']/driver").get("cache") is None
    assert root.find("devices/disk/driver").attrib == {"name": "qemu", "type": "qcow2",
                                                       "cache": "none"}
    arg = root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline/"
                    "{http://libvirt.org/schemas/domain/qemu/1.0}arg")
    assert arg is not None and arg.get("value") == "-trace"
    assert "xmlns:qemu=" in changed  # the prefix libvirt's own output uses
    assert with_cache(changed, "writeback") != DOMAIN_XML  # put back by the saved original


def entry(**fields) -> FinishedOperation:
    """slow_create as bench's client side knows it before the trace: no host figures."""
    base = handbuilt_trace.slow_create()
    return dataclasses.replace(base, qemu_written_bytes=None,
                               qemu_write_rate_bytes_per_second=None,
                               host_memory_available_start_bytes=None,
                               host_memory_free_min_bytes=None, **{"paused_seconds": None, **fields})


def test_the_figures_and_verdict_come_from_the_trace_and_the_earlier_rows():
    trace = handbuilt_trace.slow_trace()
    first = completed(entry(paused_seconds=30.2), trace, [])
    assert first.qemu_written_bytes == pytest.approx(handbuilt_trace.WRITTEN, rel=0.02)
    assert first.qemu_write_rate_bytes_per_second == pytest.approx(39e6, rel=0.03)
    assert first.host_memory_free_min_bytes < 300 * MIB < first.host_memory_free_start_bytes
    assert first.host_memory_available_min_bytes > 3 * 2**30
    assert first.host_dirty_peak_bytes > 1000 * MIB
    assert first.io_stall_seconds == pytest.approx(27, abs=2)  # PSI io ~90 % of 30 s
    assert first.paused_seconds == 30.2
    # no earlier create to learn the rate from: no expected duration
    assert (first.verdict.expected_seconds, first.verdict.slowdown) == (None, None)
    judged = completed(entry(paused_seconds=30.2), trace, handbuilt_trace.history())
    assert judged.verdict.pace_setter == "storage-slow"
    assert judged.verdict.slowdown == pytest.approx(3.0, abs=0.1)
    assert "low-memfree-ample-memavailable" in judged.verdict.present


def test_paused_seconds_counts_the_pauses_that_began_within_the_operation():
    pauses = [(5.0, 6.0), (10.02, 12.5), (12.6, None)]
    assert recording.paused_seconds(pauses, 10.0, 12.51) == pytest.approx(2.48)
    assert recording.paused_seconds(pauses, 12.55, 13.0) == pytest.approx(0.4)  # still paused
    assert recording.paused_seconds(pauses, 20.0, 21.0) == 0


INFO = RunInfo("vm", "qemu:///system", "running", 2, 1, [], "7.2.22", "9.0.0", 24 * 2**30,
               "host", "6.1", 1000.0)


def record(run: int, level: int, operation: str, duration: float, setting: Setting = INTERNAL,
           cache: str = "writeback", pace: str | None = "size", slowdown: float | None = 1.04,
           paused: float | None = None, written: int | None = 300 * MIB,
           outcome: str = "success") -> OperationRecord:
    start = 1000.0 + 100 * run + 10 * level + (5 if operation == "delete" else 0)
    verdict = None if pace is None else Verdict(
        pace, None if slowdown is None else duration / slowdown, slowdown)
    op = FinishedOperation("vm", operation, "internal", True, start, start + duration, duration,
                           outcome, snapshot=f"s{run}{level}", paused_seconds=paused,
                           qemu_written_bytes=written, verdict=verdict)
    guest = GuestReading(start, 0, 1, 256 * MIB, 512 * MIB, "balloon")
    return OperationRecord(run, level, operation, f"s{run}{level}", start, start + duration,
                           outcome, setting, cache, guest_before=guest, guest_cpu_ratio=0.03,
                           entry=op)


def test_the_study_table_shows_each_create_with_its_verdict():
    records = [record(1, 1, "create", 6.17, slowdown=None), record(1, 2, "create", 2.14),
               record(1, 2, "delete", 0.3, pace="unknown", slowdown=None),
               record(1, 1, "delete", 0.5)]
    lines = table(records, INFO).splitlines()
    assert lines[0] == ("| run | guest memory used / total (GiB) | guest CPU % | level 1       | "
                        "level 2             | delete (all) | kind / flags | cache     | QEMU   "
                        "| host RAM |")
    assert lines[2] == ("| 1   | 0.25 / 0.50                     | 3           | 6.17 s (size) | "
                        "2.14 s (size, 1.0x) | 0.80 s       | internal     | writeback | 7.2.22 "
                        "| 24.0 GiB |")
    failed = [record(2, 1, "create", 1.0, pace=None, outcome="failure")]
    assert "| failed " in table(failed, INFO)


def test_the_comparison_has_one_row_per_setting_in_the_order_run():
    live = Setting("external", True, "none")
    records = [
        record(1, 1, "create", 2.0, cache="none", paused=2.0),
        record(1, 2, "create", 4.0, cache="none", paused=4.0, pace="cache-mode", slowdown=2.5),
        record(1, 2, "delete", 0.2, cache="none"), record(1, 1, "delete", 0.4, cache="none"),
        record(2, 1, "create", 3.0, setting=live, cache="none", paused=0.1, pace="size",
               written=600 * MIB),
        record(2, 2, "create", 9.0, setting=live, cache="none", paused=0.3, pace=None,
               outcome="failure"),
        record(3, 1, "create", 1.0, setting=Setting("internal", False, "unsafe"), cache="unsafe",
               paused=1.0),
        # asked for the mode the domain was found in: the same setting as found
        record(4, 1, "create", 3.0, setting=Setting("internal", False, "none"), cache="none",
               paused=3.0),
    ]
    assert [(label, cache, len(ops)) for label, cache, ops in
            comparison.groups(records, offline=False)] == [
        ("internal", "none", 5), ("external --live", "none", 2), ("internal", "unsafe", 1)]
    lines = comparison.table(records, offline=False).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "kind / flags", "cache", "creates", "create p50 / max", "guest paused p50 / max",
        "delete p50 / max", "QEMU wrote p50", "verdicts (creates)", "slowdown p50 / max"]
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]]
    assert cells == [
        ["internal", "none", "3", "3.00 s / 4.00 s", "3.00 s / 4.00 s", "0.30 s / 0.40 s",
         "300 MiB", "size 2, cache-mode 1", "1.0x / 2.5x"],
        ["external --live", "none", "1 (1 failed)", "3.00 s / 3.00 s", "0.10 s / 0.10 s", "-",
         "600 MiB", "size 1", "1.0x / 1.0x"],
        ["internal", "unsafe", "1", "1.00 s / 1.00 s", "1.00 s / 1.00 s", "-", "300 MiB",
         "size 1", "1.0x / 1.0x"],
    ]


def test_a_csv_row_carries_the_verdict_and_the_logs_fields():
    r = record(1, 2, "create", 2.14, paused=2.1)
    r.entry = dataclasses.replace(r.entry, verdict=Verdict(
        "storage-slow", 0.7, 3.06, present=("dirty-throttling", "kswapd-reclaim")))
    values = row(r, INFO)
    assert {k: values[k] for k in ("run", "level", "operation", "kind", "flags", "disk_cache",
                                   "duration_seconds", "paused_seconds", "qemu_written_bytes",
                                   "pace_setter", "expected_seconds", "slowdown",
                                   "conditions_present", "trace_plot")} == {
        "run": 1, "level": 2, "operation": "create", "kind": "internal", "flags": "",
        "disk_cache": "writeback", "duration_seconds": 2.14, "paused_seconds": 2.1,
        "qemu_written_bytes": 300 * MIB, "pace_setter": "storage-slow", "expected_seconds": 0.7,
        "slowdown": 3.06, "conditions_present": "dirty-throttling kswapd-reclaim",
        "trace_plot": None}
    r.entry = None  # its trace never completed: the client's figures, no verdict
    values = row(r, INFO)
    assert values["duration_seconds"] == 2.14 and values["pace_setter"] is None


def test_the_pure_parts_import_without_libvirt():
    code = ("import sys; sys.modules['libvirt'] = None\n"
            "import libvirt_snapshot_exporter.bench.settings\n"
            "import libvirt_snapshot_exporter.bench.recording\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
