"""The verdict on each finished operation, given once its trace is complete (3 s after its
end) and kept in its log entry, so that the API, the page and the metrics need not judge again.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Callable

from ..model.operation import FinishedOperation
from ..model.trace import Trace
from ..store.oplog import OperationsLog
from ..store.view import StateStore
from .judge import judge, reference_rate

log = logging.getLogger(__name__)


class VerdictKeeper:
    """Traces arrive on the flight recorder's thread; they are judged on the collection loop's,
    which owns the operations log."""

    def __init__(self, oplog: OperationsLog, store: StateStore, wake: Callable[[], None],
                 rate_seed: tuple[FinishedOperation, ...] = ()) -> None:
        self.oplog = oplog
        self.rate_seed = rate_seed  # a bench run's creates (rate_seed.py)
        self.store = store
        self._wake = wake
        self._traced: queue.SimpleQueue[tuple[Trace, FinishedOperation]] = queue.SimpleQueue()

    def traced(self, trace: Trace, record: FinishedOperation) -> None:
        """From any thread: judged in the loop's next cycle, which this wakes."""
        self._traced.put((trace, record))
        self._wake()

    def judge_traced(self) -> None:
        """Judge each operation whose trace came in, against the rate this host's storage
        sustained in the operations logged before it; one it cannot judge keeps no verdict."""
        while not self._traced.empty():
            trace, record = self._traced.get_nowait()
            entries, _ = self.oplog.page(0, self.oplog.size)
            rate = reference_rate([*self.rate_seed, *(e for e in entries if e.id != record.id)])
            try:
                judged = dataclasses.replace(record, verdict=judge(trace, record, rate))
            except Exception as exc:  # noqa: BLE001 - a trace it cannot judge: no verdict
                log.error("no verdict on %s of %s/%s: %s: %s", record.operation, record.domain,
                          record.snapshot, type(exc).__name__, exc)
                continue
            slowdown = judged.verdict.slowdown
            log.info("verdict on %s of %s/%s: %s (slowdown %s)", record.operation,
                     record.domain, record.snapshot, judged.verdict.pace_setter,
                     "unknown" if slowdown is None else f"{slowdown:.2f}")
            if self.oplog.amend(judged):
                self.store.operations.judged(judged)
