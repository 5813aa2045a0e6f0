"""Each bench operation traced and judged as the exporter does it.

The exporter's flight recorder (verdict/recorder.py) samples the host, the device under the
domain's images and its QEMU's threads at 8 Hz, from a quiet time before each operation to
POST_SECONDS after it. Once a trace is complete, verdict/keeper.py's `completed` reads the
operation's host figures from it and judges it against the rate learned from the run's earlier
creates, as the exporter does against the operations logged before it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence

from ..model.operation import FinishedOperation
from ..model.trace import Point, Trace
from ..verdict.recorder import FlightRecorder

MIB = 2**20


class Recorder:
    """One trace per operation: begin() before its quiet time, end() when it returned, and
    completed() hands back each trace once POST_SECONDS after its end are sampled."""

    def __init__(self, domain: str, pid_directory: str, images: list[str]) -> None:
        self.domain = domain
        self.images = images
        self._recorder = FlightRecorder("/proc", pid_directory, None)  # bench runs on the host
        self._done: queue.SimpleQueue[Trace] = queue.SimpleQueue()
        self._recorder.on_trace = lambda trace, _entry: self._done.put(trace)
        self._current = ""  # the recording begun last, for the progress line

    def start(self) -> None:
        self._recorder.start()

    def stop(self) -> None:
        """Finishes the traces of the operations that ended, with what they have so far."""
        self._recorder.stop()

    def begin(self, key: str) -> None:
        """Trace from now (and the few seconds before, as the recorder keeps them); the QEMU is
        found through its pid file, so a restarted one is too."""
        self._recorder.begin(key, self.domain, time.time(), None, self.images)
        self._current = key

    def drop(self) -> None:
        """Forget the recordings of operations that never happened (interrupted before)."""
        self._recorder.retain(())

    def end(self, key: str, entry: FinishedOperation) -> None:
        self._recorder.end(key, entry)

    def completed(self) -> list[Trace]:
        traces = []
        while not self._done.empty():
            traces.append(self._done.get_nowait())
        return traces

    def figures(self) -> str:
        """The host and QEMU now, for the progress line."""
        points = self._recorder.recent(self._current, 2)
        if not points:
            return ""
        g = points[-1].gauges
        parts = [f"MemFree {g.get('free', 0) / 2**30:.2f} GiB  Dirty {g.get('dirty', 0) / MIB:.0f} "
                 f"MiB  Writeback {g.get('writeback', 0) / MIB:.0f} MiB"]
        for key, label in (("qemu_write_bytes", "QEMU writes"),
                           ("device_write_bytes", "device writes")):
            rate = _rate(points, key)
            if rate is not None:
                parts.append(f"{label} {rate / MIB:.0f} MiB/s")
        return "  ".join(parts)


def _rate(points: Sequence[Point], key: str) -> float | None:
    if len(points) < 2 or any(key not in p.counters for p in points):
        return None
    a, b = points[-2], points[-1]
    return max(0.0, b.counters[key] - a.counters[key]) / (b.t - a.t) if b.t > a.t else None


def paused_seconds(pauses: Sequence[tuple[float, float | None]], start: float,
                   end: float) -> float:
    """How long the guest was paused by an operation: each pause that began within it (the
    SUSPENDED event comes a few ms after the call began), until its RESUMED (or the end)."""
    return sum((resumed if resumed is not None else end) - suspended
               for suspended, resumed in pauses if start <= suspended <= end)
