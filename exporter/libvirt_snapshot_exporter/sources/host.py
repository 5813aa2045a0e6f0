"""The hypervisor host's memory, page cache, writeback and pressure.

psutil gives the fields whose meaning matches /proc/meminfo exactly (MemTotal, MemFree,
MemAvailable, Buffers, Shmem). The rest it lacks or redefines (its `cached` is Cached +
SReclaimable), so Cached, Dirty, Writeback, Active(file), Inactive(file), /proc/vmstat and PSI
are read by hand, giving the same figures node_exporter does.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import time
from pathlib import Path

import psutil

from ..model.samples import HostSample

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

MEMINFO_FIELDS = {
    "cached": "Cached",
    "dirty": "Dirty",
    "writeback": "Writeback",
    "active_file": "Active(file)",
    "inactive_file": "Inactive(file)",
}
DIRTY_SYSCTLS = ("dirty_ratio", "dirty_background_ratio", "dirty_bytes", "dirty_background_bytes")


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as bytes per field name."""
    values = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def vmstat_fields(text: str) -> dict[str, int]:
    """/proc/vmstat as it is: counts (mostly pages) per field name."""
    return {name: int(value) for name, value in
            (line.split() for line in text.splitlines() if line.count(" ") == 1)}


def parse_vmstat(text: str) -> dict[str, int]:
    """pgpgout (KiB), nr_dirtied and nr_written (pages) from /proc/vmstat, as bytes."""
    raw = vmstat_fields(text)
    out = {}
    if "pgpgout" in raw:
        out["pageout"] = int(raw["pgpgout"]) * 1024
    for key, name in (("nr_dirtied", "dirtied"), ("nr_written", "written")):
        if key in raw:
            out[name] = int(raw[key]) * PAGE_SIZE
    return out


def parse_pressure(text: str) -> dict[str, float]:
    """A /proc/pressure/* file: {'some': seconds, 'full': seconds} from the total= fields."""
    out = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for item in fields:
            if item.startswith("total="):
                out[kind] = int(item[6:]) / 1e6
    return out


class HostReader:
    """Reads the host figures from a procfs (the host's own /proc, or one mounted elsewhere)."""

    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = Path(procfs)
        psutil.PROCFS_PATH = procfs

    def read(self) -> HostSample:
        now = time.time()
        vm = psutil.virtual_memory()
        meminfo = parse_meminfo((self.procfs / "meminfo").read_text())
        memory = {
            "total": vm.total,
            "free": vm.free,
            "available": vm.available,
            "buffers": vm.buffers,
            "shmem": vm.shared,
            **{key: meminfo[name] for key, name in MEMINFO_FIELDS.items() if name in meminfo},
        }
        vmstat = parse_vmstat((self.procfs / "vmstat").read_text())
        limits = {}
        for name in DIRTY_SYSCTLS:
            with contextlib.suppress(OSError):
                limits[name] = float((self.procfs / "sys/vm" / name).read_text())
        pressure = {}
        for resource in ("memory", "io"):
            try:
                text = (self.procfs / "pressure" / resource).read_text()
            except OSError:
                continue  # kernel without PSI
            for kind, seconds in parse_pressure(text).items():
                pressure[f"{resource}_{kind}"] = seconds
        return HostSample(now, memory, vmstat, limits, pressure)

    def hostname(self, override: str = "") -> str:
        return override or socket.gethostname()

    @staticmethod
    def kernel() -> str:
        return platform.release()
