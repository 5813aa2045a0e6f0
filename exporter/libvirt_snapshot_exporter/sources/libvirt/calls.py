"""libvirt calls run on worker threads under deadlines, so the collection loop never waits for
one: a call that does not answer costs its caller nothing but that call's answer.
"""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any


class LibvirtUnavailable(Exception):
    """libvirtd cannot be reached, or a call did not answer before its deadline."""


class DaemonWorkers:
    """A fixed set of daemon threads running calls. Not a ThreadPoolExecutor: its workers are
    joined at interpreter exit, so one call that never returns (a libvirtd that accepts the
    connection and never answers) would keep the process alive after SIGTERM."""

    def __init__(self, count: int, name: str) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        for number in range(count):
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True).start()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            future, fn = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                future.set_exception(exc)
            else:
                future.set_result(result)


class Deadlines:
    """Runs calls on worker threads and stops waiting after a deadline.

    A call that overruns keeps its key busy until it really returns, so a stuck domain costs one
    worker, never more. libvirtd serves at most five calls at once per client connection.
    """

    def __init__(self, workers: int = 4) -> None:
        self._pool = DaemonWorkers(workers, "libvirt-call")
        self._pending: dict[str, concurrent.futures.Future] = {}
        self._lock = threading.Lock()

    def submit(self, key: str, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Start a call; refused while an earlier call with the same key has not returned."""
        with self._lock:
            pending = self._pending.get(key)
            if pending is not None and not pending.done():
                raise LibvirtUnavailable(f"{key}: an earlier call has not returned yet")
            future = self._pool.submit(fn)
            self._pending[key] = future
        # Outside the lock: a future already done calls back at once, in this thread.
        future.add_done_callback(functools.partial(self._returned, key))
        return future

    def _returned(self, key: str, future: concurrent.futures.Future) -> None:
        """A call that returned frees its key: two per domain, each holding a lock, a
        condition and its methods, were a quarter of the objects the garbage collector
        tracked at 1,000 domains."""
        with self._lock:
            if self._pending.get(key) is future:
                del self._pending[key]

    def call(self, key: str, timeout: float, fn: Callable[[], Any]) -> Any:
        future = self.submit(key, fn)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise LibvirtUnavailable(f"{key}: no answer within {timeout:g} s") from None
