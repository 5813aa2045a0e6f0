"""Real snapshot operations driven from a test, and waits on the exporters that watch them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter_proc import ExporterProcess


def recorded(exporter: ExporterProcess, domain: str, since: float) -> list[dict]:
    """The operations of domain the exporter logged as ended since then."""
    data = json.loads(exporter.get("/api/operations"))
    return [o for o in data["operations"] if o["domain"] == domain and o["end"] >= since]


@dataclass
class Ran:
    error: Exception | None  # what libvirt raised
    unlogged: list[str]  # the exporters (URLs) that did not log the operation

    @property
    def logged(self) -> bool:
        return not self.unlogged


def run_recorded(exporters: list[ExporterProcess], domain: str, operation: Callable[[], object],
                 during: Callable[[], None] = lambda: None, timeout: float = 30.0) -> Ran:
    """Run operation on a thread, call during() over and over while it runs, then wait until
    every exporter has logged it, so that the next operation is a distinct one."""
    since = time.time()
    errors: list[Exception] = []

    def run() -> None:
        try:
            operation()
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    while thread.is_alive():
        during()
        time.sleep(0.1)
    thread.join()
    deadline = time.monotonic() + timeout
    pending = exporters
    while pending and time.monotonic() < deadline:
        pending = [e for e in pending if not recorded(e, domain, since)]
        time.sleep(0.2)
    return Ran(errors[0] if errors else None, [e.url for e in pending])
