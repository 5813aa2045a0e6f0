"""What the routes render once and serve many times: a bounded cache of values, each kept with
what it was made from, so that a request for a page already made costs a look-up and a
comparison instead of a rendering, and many clients asking for one page at once make it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class PageCache(Generic[T]):
    """Up to `size` values weighing `budget` together (by `weigh`; the newest is kept
    whatever it weighs), the least recently used leaving first; the keys come from clients
    (ids, filters, offsets), so these bounds are what keeps their memory finite."""

    def __init__(self, size: int, budget: int = 0, weigh: Callable[[T], int] | None = None
                 ) -> None:
        self.size = size
        self.budget = budget  # 0: no bound but the count
        self.weigh = weigh or (lambda _value: 0)
        self.weight = 0
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[object, T]] = OrderedDict()
        self._making: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, source: object, make: Callable[[], T]) -> T:
        """The value of key made from source (compared with ==: a tuple of the objects it is
        made from compares them by identity first); made now when it was made from anything
        else. Callers asking for the same key at once wait for one of them to make it."""
        found = self._found(key, source)
        if found is not None:
            return found[0]
        with self._lock:
            making = self._making.setdefault(key, threading.Lock())
        with making:
            found = self._found(key, source)
            if found is None:
                found = (make(),)
                self._keep(key, source, found[0])
        with self._lock:
            if not making.locked():
                self._making.pop(key, None)
        return found[0]

    def _keep(self, key: Hashable, source: object, value: T) -> None:
        with self._lock:
            if key in self._values:
                self.weight -= self.weigh(self._values.pop(key)[1])
            self._values[key] = (source, value)
            self.weight += self.weigh(value)
            while len(self._values) > self.size or (
                    self.budget and self.weight > self.budget and len(self._values) > 1):
                self.weight -= self.weigh(self._values.popitem(last=False)[1][1])

    def _found(self, key: Hashable, source: object) -> tuple[T] | None:
        with self._lock:
            kept = self._values.get(key)
            if kept is None or kept[0] != source:
                return None
            self._values.move_to_end(key)
            return (kept[1],)
