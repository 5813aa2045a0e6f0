"""Host and guest context of each snapshot operation: what the study watched with dstat.

Pure bookkeeping fed with timestamped samples. An operation is often recognised a moment after
it began, so recent samples are kept and replayed from the operation's real start.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from ..model.samples import HostSample, ProcessSample


@dataclass
class OperationContext:
    host_memory_available_start_bytes: int | None = None
    host_memory_free_start_bytes: int | None = None
    host_memory_available_min_bytes: int | None = None
    host_memory_free_min_bytes: int | None = None
    host_cached_start_bytes: int | None = None
    host_dirty_peak_bytes: int | None = None
    host_writeback_peak_bytes: int | None = None
    qemu_written_bytes: int | None = None
    memory_stall_seconds: float | None = None
    io_stall_seconds: float | None = None
    guest_memory_used_bytes: int | None = None
    guest_memory_total_bytes: int | None = None
    guest_cpu_ratio: float | None = None
    # running totals
    _psi_memory_start: float | None = None
    _psi_io_start: float | None = None
    _last_process: tuple[int, int] | None = None  # pid, write_bytes

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def add_host(self, sample: HostSample) -> None:
        mem = sample.memory
        if self.host_memory_available_start_bytes is None:
            self.host_memory_available_start_bytes = mem.get("available")
            self.host_memory_free_start_bytes = mem.get("free")
            self.host_cached_start_bytes = mem.get("cached")
            self._psi_memory_start = sample.pressure.get("memory_some")
            self._psi_io_start = sample.pressure.get("io_some")
        self.host_memory_available_min_bytes = _min(
            self.host_memory_available_min_bytes, mem.get("available"))
        self.host_memory_free_min_bytes = _min(self.host_memory_free_min_bytes, mem.get("free"))
        self.host_dirty_peak_bytes = _max(self.host_dirty_peak_bytes, mem.get("dirty"))
        self.host_writeback_peak_bytes = _max(self.host_writeback_peak_bytes, mem.get("writeback"))
        if self._psi_memory_start is not None and "memory_some" in sample.pressure:
            self.memory_stall_seconds = sample.pressure["memory_some"] - self._psi_memory_start
        if self._psi_io_start is not None and "io_some" in sample.pressure:
            self.io_stall_seconds = sample.pressure["io_some"] - self._psi_io_start

    def add_process(self, sample: ProcessSample) -> None:
        if sample.write_bytes is None:
            return
        if self._last_process is not None and self._last_process[0] == sample.pid:
            delta = max(0, sample.write_bytes - self._last_process[1])
            self.qemu_written_bytes = (self.qemu_written_bytes or 0) + delta
        elif self.qemu_written_bytes is None:
            self.qemu_written_bytes = 0
        self._last_process = (sample.pid, sample.write_bytes)


def write_rate(written: int | None, seconds: float) -> int | None:
    """Bytes QEMU wrote per second of an operation (the exporter's log and bench's CSV)."""
    return round(written / seconds) if written is not None and seconds > 0 else None


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


class ContextKeeper:
    """Keeps recent samples and one OperationContext per operation in flight."""

    def __init__(self, history_seconds: float = 300.0) -> None:
        self._history = history_seconds
        self._host: deque[HostSample] = deque()
        self._process: dict[str, deque[tuple[float, ProcessSample]]] = {}
        self._active: dict[str, tuple[str, float, OperationContext]] = {}

    def add_host(self, sample: HostSample) -> None:
        self._host.append(sample)
        while self._host and self._host[0].time < sample.time - self._history:
            self._host.popleft()
        for _domain, start, ctx in self._active.values():
            if sample.time >= start:
                ctx.add_host(sample)

    def add_process(self, domain: str, when: float, sample: ProcessSample) -> None:
        ring = self._process.setdefault(domain, deque())
        ring.append((when, sample))
        while ring and ring[0][0] < when - self._history:
            ring.popleft()
        for dom, start, ctx in self._active.values():
            if dom == domain and when >= start:
                ctx.add_process(sample)

    def forget_domain(self, domain: str) -> None:
        self._process.pop(domain, None)

    def begin(self, key: str, domain: str, start: float, guest_memory_used: int | None,
              guest_memory_total: int | None, guest_cpu_ratio: float | None) -> None:
        """Start a context at the operation's real start, from the last samples before it."""
        if key in self._active:
            return
        ctx = OperationContext(
            guest_memory_used_bytes=guest_memory_used,
            guest_memory_total_bytes=guest_memory_total,
            guest_cpu_ratio=guest_cpu_ratio,
        )
        before = [s for s in self._host if s.time <= start]
        for sample in ([before[-1]] if before else []) + [s for s in self._host if s.time > start]:
            ctx.add_host(sample)
        ring = self._process.get(domain, ())
        earlier = [s for t, s in ring if t <= start]
        for sample in ([earlier[-1]] if earlier else []) + [s for t, s in ring if t > start]:
            ctx.add_process(sample)
        self._active[key] = (domain, start, ctx)

    def current(self, key: str) -> OperationContext | None:
        entry = self._active.get(key)
        return entry[2] if entry else None

    def finish(self, key: str) -> OperationContext:
        entry = self._active.pop(key, None)
        return entry[2] if entry else OperationContext()

    def active_keys(self) -> list[str]:
        return list(self._active)
