"""What the host and QEMU process readers return: plain records the loop, the recorder and the
store share, so none of them imports a reader to name its figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# HostSample.memory's keys and the /proc/meminfo field each is read from: one table for the
# reader, the metrics and the traces.
MEMINFO = {
    "total": "MemTotal", "free": "MemFree", "available": "MemAvailable", "buffers": "Buffers",
    "cached": "Cached", "dirty": "Dirty", "writeback": "Writeback", "shmem": "Shmem",
    "active_file": "Active(file)", "inactive_file": "Inactive(file)",
}


@dataclass(frozen=True)
class HostSample:
    time: float
    # bytes: MEMINFO's keys, and dirty_threshold, dirty_background_threshold (/proc/vmstat)
    memory: dict[str, int]
    vmstat: dict[str, int] = field(default_factory=dict)  # bytes: pageout dirtied written
    dirty_limits: dict[str, float] = field(default_factory=dict)
    pressure: dict[str, float] = field(default_factory=dict)  # seconds: memory_some io_full ...
    # counts from /proc/vmstat: pgscan_kswapd pgscan_direct pgsteal_* allocstall (all zones)
    reclaim: dict[str, int] = field(default_factory=dict)
    disks: dict[str, Any] = field(default_factory=dict)  # device -> psutil's sdiskio, if read


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    rss_bytes: int
    read_bytes: int | None
    write_bytes: int | None
    io_source: str  # proc_io | cgroup | none
