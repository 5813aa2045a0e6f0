"""Each source's health, as `collector_success{collector=...}` and its duration and age publish
it: a source whose step raises fails alone, with one log line until it works again, and the
collection cycle goes on with the others. The calls a source starts on libvirt's workers are
handled once they have answered (LaterCalls), in a later cycle if need be, as a step of that
source: no call holds up the loop (a domain whose lock is held answers when it can).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from ..sources.libvirt.calls import LibvirtUnavailable
from ..store.view import SourceStatus

log = logging.getLogger(__name__)


class Source(StrEnum):
    """The exporter's sources, the `collector` label of their success, duration and age."""

    DOMAINS = "domains"  # states, controlInfo, snapshot lists, disk XML
    GUESTS = "guests"  # bulk guest statistics
    HOST = "host"  # /proc meminfo, vmstat, PSI
    QEMU_PROCESS = "qemu_process"  # each QEMU's /proc figures
    IMAGES = "images"  # stat and statvfs of the domains' images
    METADATA = "metadata"  # the inotify watch of libvirt's snapshot metadata
    RECORDER = "recorder"  # the flight recorder's 8 Hz sampling
    TRACES = "traces"  # writing traces to the state directory


class SourceHealth:
    def __init__(self) -> None:
        self._status: dict[str, SourceStatus] = {}
        self._failing: set[str] = set()  # sources whose last step raised
        self._failed_this_cycle: set[str] = set()  # a later success in the cycle keeps 0

    def new_cycle(self) -> None:
        self._failed_this_cycle.clear()

    def run(self, source: str, step: Callable[[], None]) -> None:
        """Run one step of a source; an exception sets that source's success to 0 for the
        rest of the cycle and is logged once until the source works again."""
        start = time.time()
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is that source's alone
            if source not in self._failing:
                log.error("collector %s failed: %s: %s (logged once until it recovers)",
                          source, type(exc).__name__, exc)
                self._failing.add(source)
            self._failed_this_cycle.add(source)
            self.mark(source, False, time.time() - start)

    def mark(self, source: str, success: bool, duration: float) -> None:
        if success and source in self._failed_this_cycle:
            return  # a step of this source failed earlier in the cycle: that stands
        if success and source in self._failing:
            self._failing.discard(source)
            log.info("collector %s works again", source)
        previous = self._status.get(source)
        last = time.time() if success else (previous.last_success if previous else None)
        self._status[source] = SourceStatus(success, duration, last)

    def statuses(self) -> dict[str, SourceStatus]:
        """A copy, for the published view."""
        return dict(self._status)



Handler = Callable[[concurrent.futures.Future], None]


class LaterCalls:
    def __init__(self, health: SourceHealth) -> None:
        self._health = health
        # key -> (the call, what handles its answer, the source it belongs to)
        self._out: dict[str, tuple[concurrent.futures.Future, Handler, str]] = {}

    @property
    def calls_out(self) -> bool:
        return bool(self._out)

    def start(self, key: str, submit: Callable[[], concurrent.futures.Future], handle: Handler,
              source: str) -> None:
        """Start a call unless one with this key is still out."""
        if key in self._out:
            return
        try:
            self._out[key] = (submit(), handle, source)
        except LibvirtUnavailable as exc:
            log.debug("%s: %s", key, exc)

    def finish(self, timeout: float) -> None:
        """Wait up to timeout for the calls out, then hand each answered one to its handler,
        as a step of its source."""
        if self._out:
            concurrent.futures.wait([f for f, _, _ in self._out.values()], timeout=timeout)
        for key, (future, handle, source) in list(self._out.items()):
            if future.done():
                del self._out[key]
                self._health.run(source, functools.partial(handle, future))

    def clear(self) -> None:
        """Forget the calls out (they were made on a connection that is gone)."""
        self._out.clear()
