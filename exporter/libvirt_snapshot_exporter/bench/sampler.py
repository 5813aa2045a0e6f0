"""Host and QEMU samples taken on a thread for a whole bench run.

The study watched dstat beside `time virsh snapshot-create-as`; this is that dstat: the host's
memory, page cache, dirty data and writeback (host.HostReader) and the bytes the domain's QEMU
wrote (qemu_process.ProcessReader), several times a second before, during and after each
operation. None of it calls libvirt, so it keeps sampling while a snapshot holds the domain.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..context import OperationContext
from ..host import HostReader, HostSample
from ..qemu_process import ProcessReader, ProcessSample, read_qemu_pid


@dataclass(frozen=True)
class QemuSample:
    time: float
    process: ProcessSample
    write_rate: float | None  # bytes/s since the previous sample of the same process


class Sampler:
    """Samples every `interval` seconds on a daemon thread until stop()."""

    def __init__(self, domain: str, interval: float = 0.25, procfs: str = "/proc",
                 pid_directory: str = "/run/libvirt/qemu") -> None:
        self.interval = interval
        self._domain = domain
        self._pid_directory = Path(pid_directory)
        self._host_reader = HostReader(procfs)
        self._processes = ProcessReader(procfs)
        self.host: list[HostSample] = []
        self.qemu: list[QemuSample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)

    def start(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            host = self._host_reader.read()
        except OSError:
            host = None
        pid = read_qemu_pid(self._pid_directory, self._domain)
        process = self._processes.read(pid) if pid else None
        now = time.time()
        with self._lock:
            if host is not None:
                self.host.append(host)
            if process is not None:
                self.qemu.append(QemuSample(now, process, self._rate(now, process)))

    def _rate(self, now: float, process: ProcessSample) -> float | None:
        if not self.qemu or process.write_bytes is None:
            return None
        last = self.qemu[-1]
        if last.process.pid != process.pid or last.process.write_bytes is None or now <= last.time:
            return None
        return max(0, process.write_bytes - last.process.write_bytes) / (now - last.time)

    def latest(self) -> tuple[HostSample | None, QemuSample | None]:
        with self._lock:
            return (self.host[-1] if self.host else None, self.qemu[-1] if self.qemu else None)

    def context(self, start: float, end: float, guest_used: int | None, guest_total: int | None,
                guest_cpu_ratio: float | None) -> OperationContext:
        """The exporter's per-operation figures (start, minimum, peak, bytes written) from the
        last sample before the operation to the first one after it."""
        ctx = OperationContext(guest_memory_used_bytes=guest_used,
                               guest_memory_total_bytes=guest_total, guest_cpu_ratio=guest_cpu_ratio)
        with self._lock:
            for sample in _bracket(self.host, start, end, lambda s: s.time):
                ctx.add_host(sample)
            for sample in _bracket(self.qemu, start, end, lambda s: s.time):
                ctx.add_process(sample.process)
        return ctx


def _bracket(samples: list, start: float, end: float, when) -> list:
    """Samples inside [start, end] plus the one just before and the one just after."""
    before = [s for s in samples if when(s) < start][-1:]
    inside = [s for s in samples if start <= when(s) <= end]
    after = [s for s in samples if when(s) > end][:1]
    return before + inside + after
