"""Calls the collection loop starts on libvirt's workers and handles once they have answered,
in a later cycle if need be: no call holds up the loop (a domain whose lock is held answers
when it can)."""

from __future__ import annotations

import concurrent.futures
import functools
import logging
from collections.abc import Callable

from ..sources.libvirt.calls import LibvirtUnavailable
from .source_health import SourceHealth

log = logging.getLogger(__name__)

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
