"""The collection loop's inbox: observations pushed by other threads (libvirt's events), in
arrival order, and a wake-up for the loop.

The loop sleeps on the wake-up, never on the queue: taking an event out to wait for it and
putting it back moved it behind the events that arrived meanwhile, which reordered a QEMU
killed mid-create (SUSPENDED/API_ERROR then STOPPED) and stretched the failure by seconds.

A poll's answer is fed to the tracker between the events stamped before it and those stamped
after it (`drain_until`). A poll is answered on a worker and collected later, so by then the
inbox may hold events from both sides of it: feeding the poll first charged the next create a
finished create's pause (its RESUMED came after), and feeding every queued event first lost a
delete that followed a revert (the older poll then undid what the newer events said).
"""

from __future__ import annotations

import collections
import math
import threading
from typing import Generic, Protocol, TypeVar


class Stamped(Protocol):
    @property
    def time(self) -> float: ...


Item = TypeVar("Item", bound=Stamped)


class Inbox(Generic[Item]):
    def __init__(self) -> None:
        self._items: collections.deque[Item] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def put(self, item: Item) -> None:
        """From any thread (libvirt's event loop)."""
        with self._lock:
            self._items.append(item)
        self._wake.set()

    def wake(self) -> None:
        """Wake the loop with nothing to read (stop)."""
        self._wake.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until something arrives or timeout; True when woken. The wake-up is cleared
        before the loop drains, so whatever arrives after this returns wakes the next wait."""
        woken = self._wake.wait(timeout)
        self._wake.clear()
        return woken

    def drain_until(self, until: float = math.inf) -> list[Item]:
        """The queued items stamped at or before `until`, in arrival order; later ones stay
        queued, in order. Without `until`, everything queued."""
        with self._lock:
            taken = [item for item in self._items if item.time <= until]
            if len(taken) == len(self._items):
                self._items.clear()
            elif taken:
                self._items = collections.deque(i for i in self._items if i.time > until)
        return taken
