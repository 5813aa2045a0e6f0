"""The flight recorder's /proc and sysfs reading, fed with files read on this kind of machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psutil
import pytest
from libvirt_snapshot_exporter.model.samples import MEMINFO
from libvirt_snapshot_exporter.sources.host import (
    PAGE_SIZE,
    HostReader,
    parse_meminfo,
    parse_pressure,
    vmstat_fields,
)
from libvirt_snapshot_exporter.sources.qemu_process import parse_schedstat, parse_task_stat
from libvirt_snapshot_exporter.verdict.recorder import (
    block_device,
    host_point,
    mount_point,
    storage_of,
)

PROC = Path(__file__).parent / "proc"


def test_task_stat_of_a_vcpu_thread_whose_name_has_a_space_and_a_slash():
    assert parse_task_stat((PROC / "task-stat-vcpu").read_text()) == ("CPU 0/TCG", "R")


def test_task_stat_of_the_main_thread():
    name, state = parse_task_stat((PROC / "task-stat-main").read_text())
    assert name == "qemu-system-x86" and state in "RSD"


def test_task_stat_name_with_a_parenthesis():
    assert parse_task_stat("42 (a) b) D 1 2 3") == ("a) b", "D")


def test_schedstat_run_delay_is_the_second_field():
    text = (PROC / "task-schedstat").read_text()
    assert parse_schedstat(text) == int(text.split()[1]) > 0


def test_vmstat_fields_as_the_kernel_counts_them():
    fields = vmstat_fields((PROC / "vmstat").read_text())
    assert fields["nr_dirty_threshold"] > fields["nr_dirty_background_threshold"] > 0
    assert {"pgscan_direct", "pgsteal_direct", "pgscan_kswapd", "allocstall_normal"} <= set(fields)


def test_pressure_cpu_has_some():
    assert "some" in parse_pressure((PROC / "pressure-cpu").read_text())


@pytest.fixture
def procfs(tmp_path):
    root = tmp_path / "proc"
    (root / "pressure").mkdir(parents=True)
    for name in ("meminfo", "vmstat", "diskstats"):
        shutil.copy(PROC / name, root / name)
    shutil.copy(PROC / "pressure-memory", root / "pressure" / "memory")
    shutil.copy(PROC / "pressure-cpu", root / "pressure" / "cpu")  # no io: read without it
    yield root
    psutil.PROCFS_PATH = "/proc"


def test_host_sample_from_captured_files(procfs):
    """One reader for the loop and the recorder: with disks, what the recorder traces."""
    sample = HostReader(str(procfs)).read(traced=True)
    meminfo = parse_meminfo((PROC / "meminfo").read_text())
    vmstat = vmstat_fields((PROC / "vmstat").read_text())
    for key, name in MEMINFO.items():
        assert sample.memory[key] == meminfo[name], key
    assert sample.memory["dirty_threshold"] == vmstat["nr_dirty_threshold"] * PAGE_SIZE
    assert sample.reclaim["allocstall"] == sum(
        v for k, v in vmstat.items() if k.startswith("allocstall"))
    point = host_point(sample, next(iter(sample.disks)))
    assert point.gauges["free"] == meminfo["MemFree"]
    assert point.gauges["dirty_threshold"] == vmstat["nr_dirty_threshold"] * PAGE_SIZE
    assert "psi_memory_some" in point.counters and "psi_cpu_some" in point.counters
    assert not any(k.startswith("psi_io") for k in point.counters)
    disk = next(iter(sample.disks))
    assert point.counters["device_write_bytes"] == sample.disks[disk].write_bytes
    assert "device_busy_ms" in point.counters
    assert "device_write_bytes" not in host_point(sample, "nosuchdisk").counters
    (procfs / "sys/vm").mkdir(parents=True)
    (procfs / "sys/vm/dirty_ratio").write_text("20\n")
    loops = HostReader(str(procfs)).read()
    assert loops.disks == {} and loops.dirty_limits == {"dirty_ratio": 20.0}  # the loop's
    assert HostReader(str(procfs)).read(traced=True).dirty_limits == {}  # not at 8 Hz


def fake_sysfs(tmp_path: Path, target: Path, partition: bool) -> Path:
    """A sysfs whose dev/block entry for target's device is a partition of sdz, or sdz."""
    dev = os.stat(target).st_dev
    disk = tmp_path / "sys/devices/pci0/block/sdz"
    node = disk / "sdz1" if partition else disk
    node.mkdir(parents=True)
    if partition:
        (node / "partition").write_text("1\n")
    (tmp_path / "sys/dev/block").mkdir(parents=True)
    (tmp_path / "sys/dev/block" / f"{os.major(dev)}:{os.minor(dev)}").symlink_to(node)
    return tmp_path / "sys"


@pytest.mark.parametrize("partition", [True, False])
def test_block_device_is_the_whole_disk(tmp_path, partition):
    image = tmp_path / "vm.qcow2"
    image.write_bytes(b"")
    sysfs = fake_sysfs(tmp_path, image, partition)
    assert block_device(str(image), str(sysfs)) == "sdz"


def test_block_device_of_a_file_on_no_block_device(tmp_path):
    image = tmp_path / "vm.qcow2"
    image.write_bytes(b"")
    (tmp_path / "sys/dev/block").mkdir(parents=True)
    assert block_device(str(image), str(tmp_path / "sys")) == ""
    assert block_device(str(tmp_path / "missing.qcow2"), str(tmp_path / "sys")) == ""


def test_the_storage_is_the_device_else_the_mount_else_the_network_pool(tmp_path):
    """What a domain's disks live on, whose rate the verdict learns: the block device where
    there is one (whatever disk comes first), else the filesystem's mount point (NFS, FUSE:
    no device of their own), else for a network disk ('pool/image') its pool."""
    image = tmp_path / "vm.qcow2"
    image.write_bytes(b"")
    sysfs = fake_sysfs(tmp_path, image, partition=True)
    assert storage_of(["rbd-pool/vm", str(image)], str(sysfs)) == ("sdz", "sdz")
    nodevice = tmp_path / "none"
    (nodevice / "dev/block").mkdir(parents=True)
    mount = storage_of([str(image)], str(nodevice))
    assert mount == ("", mount_point(str(image))) and os.path.ismount(mount[1])
    assert storage_of(["rbd-pool/vm", "rbd-pool/vm-data"], str(nodevice)) == (
        "", "network:rbd-pool")
    assert storage_of([str(tmp_path / "gone.qcow2")], str(nodevice)) == ("", "")
    assert storage_of([], str(nodevice)) == ("", "")
