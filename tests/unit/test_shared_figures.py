"""The figures the exporter and bench both derive, by one rule each: guest CPU ratio, guest
memory used and total, QEMU's write rate, the QEMU pid file and libvirt's versions."""

from __future__ import annotations

import libvirt
import pytest
from libvirt_snapshot_exporter.bench.control import GuestReading
from libvirt_snapshot_exporter.context import write_rate
from libvirt_snapshot_exporter.libvirt_common import read_versions, version_string
from libvirt_snapshot_exporter.qemu_process import ProcessSample, read_qemu_pid
from libvirt_snapshot_exporter.state import (
    CpuReading,
    cpu_ratio,
    cpu_reading,
    guest_memory_total,
    guest_memory_used,
)


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
    assert cpu_reading(7.0, {"cpu.time": 9, "vcpu.current": 4}) == CpuReading(7.0, 9, 4)
    assert cpu_reading(7.0, {"state.state": 5}) is None


def test_guest_memory_balloon_first_then_qemu_rss():
    process = ProcessSample(42, 300 * 2**20, None, None, "none")
    balloon = {"balloon.available": 1000, "balloon.unused": 400, "balloon.current": 1024}
    assert guest_memory_used(balloon, process) == (600 * 1024, "balloon")
    assert guest_memory_used({"balloon.current": 1024}, process) == (300 * 2**20, "qemu_rss")
    assert guest_memory_used({}, None) is None
    assert guest_memory_total(balloon) == 1024 * 1024
    assert guest_memory_total({}) is None


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
