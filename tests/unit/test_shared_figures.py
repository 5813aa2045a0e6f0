"""The figures the exporter and bench both derive, by one rule each: guest CPU ratio, guest
memory used and total, QEMU's write rate, the QEMU pid file and libvirt's versions."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
from libvirt_snapshot_exporter.bench.control import GuestReading
from libvirt_snapshot_exporter.model.context import write_rate
from libvirt_snapshot_exporter.model.guest import (
    CpuReading,
    cpu_ratio,
    cpu_reading,
    guest_memory_total,
    guest_memory_used,
)
from libvirt_snapshot_exporter.model.observations import BlockStats, GuestStats
from libvirt_snapshot_exporter.model.samples import ProcessSample
from libvirt_snapshot_exporter.sources.libvirt.common import guest_stats, read_versions, version_string
from libvirt_snapshot_exporter.sources.qemu_process import read_qemu_pid


def test_cpu_ratio_is_cpu_time_per_vcpu_per_wall_second():
    before = CpuReading(100.0, 5_000_000_000, 2)
    assert cpu_ratio(before, CpuReading(102.0, 6_000_000_000, 2)) == pytest.approx(0.25)
    assert cpu_ratio(before, CpuReading(100.0, 6_000_000_000, 2)) is None  # no time passed
    assert cpu_ratio(before, CpuReading(101.0, 4_000_000_000, 2)) == 0.0  # QEMU restarted
    assert cpu_ratio(before, CpuReading(101.0, 6_000_000_000, 0)) == pytest.approx(1.0)


def test_bench_reading_is_a_cpu_reading_with_the_same_fields_first():
    reading = GuestReading(1.0, 2, 1, 3, 4, "balloon")
    assert cpu_ratio(CpuReading(0.0, 0, 1), reading) == pytest.approx(2e-9)
    assert list(reading.__dataclass_fields__)[:3] == ["time", "cpu_time_ns", "vcpus"]


def test_cpu_reading_from_domain_stats():
    assert cpu_reading(7.0, guest_stats({"cpu.time": 9, "vcpu.current": 4})) == CpuReading(7.0, 9, 4)
    assert cpu_reading(7.0, guest_stats({"state.state": 5})) is None


def test_guest_memory_balloon_first_then_qemu_rss():
    process = ProcessSample(42, 300 * 2**20, None, None, "none")
    balloon = guest_stats(
        {"balloon.available": 1000, "balloon.unused": 400, "balloon.current": 1024})
    assert guest_memory_used(balloon, process) == (600 * 1024, "balloon")
    assert guest_memory_used(guest_stats({"balloon.current": 1024}), process) == (
        300 * 2**20, "qemu_rss")
    assert guest_memory_used(GuestStats(), None) is None
    assert guest_memory_total(balloon) == 1024 * 1024
    assert guest_memory_total(GuestStats()) is None


# getAllDomainStats (NOWAIT) of a running TCG guest with a balloon driver, libvirt 9.0 / QEMU 7.2.
LIBVIRT_STATS = json.loads(
    (Path(__file__).parent / "libvirt" / "domain_stats_running.json").read_text())["stats"]


def test_guest_stats_in_bytes_and_nanoseconds():
    stats = guest_stats(LIBVIRT_STATS)
    kib = {k: v * 1024 for k, v in LIBVIRT_STATS.items() if k.startswith("balloon.")}
    assert stats == GuestStats(
        cpu_time_ns=LIBVIRT_STATS["cpu.time"], vcpus=LIBVIRT_STATS["vcpu.current"],
        balloon_current_bytes=kib["balloon.current"], balloon_maximum_bytes=kib["balloon.maximum"],
        available_bytes=kib["balloon.available"], usable_bytes=kib["balloon.usable"],
        unused_bytes=kib["balloon.unused"], swap_in_bytes=kib["balloon.swap_in"],
        swap_out_bytes=kib["balloon.swap_out"], major_faults=LIBVIRT_STATS["balloon.major_fault"],
        disks=(BlockStats("vda", LIBVIRT_STATS["block.0.rd.bytes"],
                          LIBVIRT_STATS["block.0.wr.bytes"]),))
    assert stats.available_bytes == 996732 * 1024  # KiB in libvirt, bytes here


def test_a_snapshot_keeps_the_guest_figures_nowait_skipped():
    """During a snapshot NOWAIT returns CPU and block figures but none of the balloon's
    (libvirt cannot ask the guest while the job holds the domain)."""
    before = guest_stats(LIBVIRT_STATS)
    during = guest_stats({k: v for k, v in LIBVIRT_STATS.items() if not k.startswith("balloon")})
    kept = during.keeping_guest_figures(before)
    assert kept.available_bytes == before.available_bytes
    assert kept.cpu_time_ns == during.cpu_time_ns and kept.disks == during.disks
    assert before.keeping_guest_figures(during) == before
    assert during.keeping_guest_figures(GuestStats()) == during


def test_write_rate():
    assert write_rate(3000, 2.0) == 1500
    assert write_rate(None, 2.0) is None
    assert write_rate(3000, 0.0) is None


def test_qemu_pid_file(tmp_path):
    (tmp_path / "guest.pid").write_text("1234\n")
    (tmp_path / "broken.pid").write_text("x")
    assert read_qemu_pid(tmp_path, "guest") == 1234
    assert read_qemu_pid(tmp_path, "broken") is None
    assert read_qemu_pid(tmp_path, "absent") is None


def test_versions_from_a_connection():
    assert version_string(9_000_000) == "9.0.0"
    assert version_string(11_003_002) == "11.3.2"
    conn = libvirt.open("test:///default")
    try:
        versions = read_versions(conn)
    finally:
        conn.close()
    assert versions.daemon == version_string(versions.daemon_number)
    assert versions.library == version_string(libvirt.getVersion())
