"""A guest's memory and CPU as read from libvirt's stats and its QEMU process: the figures the
loop, the store and the exposition derive alike."""

from __future__ import annotations

from dataclasses import dataclass

from .observations import GuestStats
from .samples import ProcessSample


def guest_memory_used(stats: GuestStats, process: ProcessSample | None
                      ) -> tuple[int, str] | None:
    """Memory the guest uses and its source: its balloon driver's figures (available - unused),
    else the QEMU process' RSS."""
    if stats.available_bytes is not None and stats.unused_bytes is not None:
        return stats.available_bytes - stats.unused_bytes, "balloon"
    if process is not None:
        return process.rss_bytes, "qemu_rss"
    return None


def guest_memory_total(stats: GuestStats) -> int | None:
    """The guest's memory as its balloon sets it."""
    return stats.balloon_current_bytes or None


@dataclass(frozen=True)
class CpuReading:
    """A guest's CPU time at one moment: two of them give its CPU ratio."""

    time: float
    cpu_time_ns: int
    vcpus: int


def cpu_reading(now: float, stats: GuestStats) -> CpuReading | None:
    """None without a CPU time (shut off)."""
    if stats.cpu_time_ns is None:
        return None
    return CpuReading(now, stats.cpu_time_ns, stats.vcpus or 1)


def cpu_ratio(before: CpuReading, after: CpuReading) -> float | None:
    """Share of its vCPUs the guest used between two readings (1.0: all of them, all the
    time); None when no time passed."""
    if after.time <= before.time:
        return None
    seconds = (after.cpu_time_ns - before.cpu_time_ns) / 1e9
    return max(0.0, seconds / (after.time - before.time) / max(1, after.vcpus))
