"""The host and guest figures of one snapshot operation (what the study watched with dstat),
folded from timestamped samples: by the collection loop as they come, and from a finished
trace by the verdict. Pure, no I/O. The figures are declared once, as FinishedOperation's
fields; here they are named by those fields."""

from __future__ import annotations

from typing import Any

from .samples import HostSample, ProcessSample

Figures = dict[str, Any]


class OperationContext:
    """Start values, the lowest and highest while the operation ran, PSI stalls and the bytes
    QEMU wrote; `figures` holds only what was seen."""

    def __init__(self, **figures: Any) -> None:
        self.figures: Figures = {k: v for k, v in figures.items() if v is not None}
        self._psi_memory_start: float | None = None
        self._psi_io_start: float | None = None
        self._last_process: tuple[int, int] | None = None  # pid, write_bytes

    def public(self) -> Figures:
        return dict(self.figures)

    def get(self, name: str) -> Any:
        return self.figures.get(name)

    def add_host(self, sample: HostSample) -> None:
        mem, fig = sample.memory, self.figures
        if fig.get("host_memory_available_start_bytes") is None:
            _set(fig, "host_memory_available_start_bytes", mem.get("available"))
            _set(fig, "host_memory_free_start_bytes", mem.get("free"))
            _set(fig, "host_cached_start_bytes", mem.get("cached"))
            self._psi_memory_start = sample.pressure.get("memory_some")
            self._psi_io_start = sample.pressure.get("io_some")
        _fold(fig, "host_memory_available_min_bytes", mem.get("available"), min)
        _fold(fig, "host_memory_free_min_bytes", mem.get("free"), min)
        _fold(fig, "host_dirty_peak_bytes", mem.get("dirty"), max)
        _fold(fig, "host_writeback_peak_bytes", mem.get("writeback"), max)
        if self._psi_memory_start is not None and "memory_some" in sample.pressure:
            fig["memory_stall_seconds"] = sample.pressure["memory_some"] - self._psi_memory_start
        if self._psi_io_start is not None and "io_some" in sample.pressure:
            fig["io_stall_seconds"] = sample.pressure["io_some"] - self._psi_io_start

    def add_process(self, sample: ProcessSample) -> None:
        if sample.write_bytes is None:
            return
        written = self.figures.get("qemu_written_bytes")
        if self._last_process is not None and self._last_process[0] == sample.pid:
            delta = max(0, sample.write_bytes - self._last_process[1])
            self.figures["qemu_written_bytes"] = (written or 0) + delta
        elif written is None:
            self.figures["qemu_written_bytes"] = 0
        self._last_process = (sample.pid, sample.write_bytes)


def write_rate(written: int | None, seconds: float) -> int | None:
    """Bytes QEMU wrote per second of an operation (the exporter's log and bench's CSV)."""
    return round(written / seconds) if written is not None and seconds > 0 else None


def _set(figures: Figures, name: str, value: Any) -> None:
    if value is not None:
        figures[name] = value


def _fold(figures: Figures, name: str, value: Any, pick: Any) -> None:
    if value is not None:
        figures[name] = value if figures.get(name) is None else pick(figures[name], value)
