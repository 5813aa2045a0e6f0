"""What becomes of each operation the tracker reports: when it begins, its host context and its
trace start (from the samples just before its real start); when it ends, its record goes to
the operations log, the store's histograms and the flight recorder, whose trace goes on for its
after part.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..store.oplog import OperationsLog
from ..store.view import StateStore
from ..tracker.tracker import Operation
from .context_keeper import ContextKeeper
from .domain_cache import DomainCache
from .operation_record import finished_operation

if TYPE_CHECKING:
    from ..verdict.recorder import FlightRecorder

log = logging.getLogger(__name__)


class OperationHandoff:
    def __init__(self, contexts: ContextKeeper, oplog: OperationsLog, store: StateStore,
                 recorder: FlightRecorder | None) -> None:
        self.contexts = contexts
        self.oplog = oplog
        self.store = store
        self.recorder = recorder  # None: trace.operations is 0

    def begun(self, op: Operation, cache: DomainCache) -> None:
        """The guest's memory and CPU as they were when it began: the study's columns."""
        used, total = cache.guest_memory()
        self.contexts.begin(op.key, op.domain, op.start, used, total, cache.cpu_ratio)
        if self.recorder is not None:
            self.recorder.begin(op.key, op.domain, op.start, cache.pid, cache.local_disk_paths())

    def finished(self, op: Operation, cache: DomainCache, qemu_version: str) -> None:
        record = finished_operation(op, self.contexts.finish(op.key), qemu_version,
                                    cache.disk_cache_modes())
        log.info("%s %s of %s/%s: %.3f s (%s, start by %s, end by %s)", op.outcome,
                 op.operation, op.domain, op.snapshot, record.duration_seconds, op.kind,
                 op.start_source, op.end_source)
        self.oplog.add(record)
        self.store.operations.record(record)
        if self.recorder is not None:
            self.recorder.end(op.key, record)
