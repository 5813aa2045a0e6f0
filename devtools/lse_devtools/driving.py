"""Real snapshot operations driven from a test, and waits on the exporters that watch them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from lse_devtools.exporter_proc import ExporterProcess


def operations(exporter: ExporterProcess, domain: str, since: float = 0.0) -> list[dict]:
    """The operations of domain the exporter logged as ended since then, oldest first."""
    data = json.loads(exporter.get("/api/operations"))
    found = [o for o in data["operations"] if o["domain"] == domain and o["end"] >= since]
    return sorted(found, key=lambda o: o["start"])


def wait_operations(exporter: ExporterProcess, domain: str, count: int, since: float = 0.0,
                    timeout: float = 20.0) -> list[dict]:
    return exporter.wait_for(
        lambda: len(ops := operations(exporter, domain, since)) >= count and ops, timeout,
        f"{count} operations of {domain}")


def wait_idle(exporter: ExporterProcess, domain: str) -> None:
    """Until the exporter knows the domain and has nothing in flight for it."""
    def idle() -> bool:
        data = json.loads(exporter.get("/api/operations"))
        return (exporter.value("libvirt_domain_info", domain=domain) is not None
                and not [o for o in data["in_flight"] if o["domain"] == domain])
    exporter.wait_for(idle, 20, f"{domain} known and idle")


def in_flight(exporter: ExporterProcess, domain: str, snapshot: str | None = None) -> list[dict]:
    """In flight as last published. An operation that just ended can still be listed there
    for up to one collection cycle (the log shows it at once): name the snapshot to wait for
    the next one."""
    data = json.loads(exporter.get("/api/operations"))
    return [o for o in data["in_flight"]
            if o["domain"] == domain and snapshot in (None, o["snapshot"])]


class Timed:
    """A libvirt call run on a thread, with the client's own wall-clock start and end."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self.error: Exception | None = None
        self.start = self.end = 0.0

        def run() -> None:
            self.start = time.time()
            try:
                fn()
            except libvirt.libvirtError as exc:
                self.error = exc
            self.end = time.time()

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def join(self) -> Timed:
        self.thread.join()
        return self

    @property
    def wall(self) -> float:
        return self.end - self.start


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
        pending = [e for e in pending if not operations(e, domain, since)]
        time.sleep(0.2)
    return Ran(errors[0] if errors else None, [e.url for e in pending])
