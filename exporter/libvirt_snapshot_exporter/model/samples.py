"""What the host and QEMU process readers return: plain records the loop, the recorder and the
store share, so none of them imports a reader to name its figures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class HostSample:
    time: float
    memory: dict[str, int]  # bytes: total free available buffers shmem cached dirty writeback ...
    vmstat: dict[str, int] = field(default_factory=dict)  # bytes: pageout dirtied written
    dirty_limits: dict[str, float] = field(default_factory=dict)
    pressure: dict[str, float] = field(default_factory=dict)  # seconds: memory_some io_full ...


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    rss_bytes: int
    read_bytes: int | None
    write_bytes: int | None
    io_source: str  # proc_io | cgroup | none
