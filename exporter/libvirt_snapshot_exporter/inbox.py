"""The collection loop's inbox: libvirt's events in arrival order, and a wake-up for the loop.

The loop sleeps on the wake-up, never on the queue: taking an event out to wait for it and
putting it back moved it behind the events that arrived meanwhile, which reordered a QEMU
killed mid-create (SUSPENDED/API_ERROR then STOPPED) and stretched the failure by seconds.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

Item = TypeVar("Item")


class Inbox(Generic[Item]):
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._wake = threading.Event()

    def put(self, item: Item) -> None:
        """From any thread (libvirt's event loop)."""
        self._queue.put(item)
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

    def drain(self) -> list[Item]:
        """Everything queued, oldest first."""
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items
