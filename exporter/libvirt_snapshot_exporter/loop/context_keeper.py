"""Recent host and QEMU samples, and the figures of each operation in flight folded from them.

An operation is often recognised a moment after it began, so recent samples are kept and
replayed from the operation's real start.
"""

from __future__ import annotations

from collections import deque

from ..model.context import OperationContext
from ..model.samples import HostSample, ProcessSample


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
