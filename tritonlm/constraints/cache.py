"""Small thread-safe LRU maps (by entries, or by bytes): the bounded caches a
``GrammarCompiler`` owns.

The runtime fills token masks on a worker thread while the engine thread compiles new
grammars against the same compiler, so every operation takes the lock; values are built
outside it (two threads may build the same value; the last one stored wins, and both are
equal).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most ``max_size`` entries; storing one more evicts the least recently used."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size={max_size}: expected at least 1")
        self.max_size = max_size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        return key in self._data

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = build()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


class SizedLRUCache(Generic[K, V]):
    """An LRU map bounded by the total size of its values (``weigh(value)``, in bytes) and
    optionally by entries. A value heavier than ``max_bytes`` on its own is not stored.

    With ``dynamic=True`` values may grow after they are stored (a grammar's memoised masks):
    every ``put`` weighs all entries again before evicting, so the total is within
    ``max_bytes`` after each ``put`` (and ``evict`` re-establishes it on demand); otherwise a
    value is weighed once, when stored.
    """

    def __init__(
        self, max_bytes: int, weigh: Callable[[V], int], *, max_entries: int | None = None, dynamic: bool = False
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes}: expected at least 1")
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"max_entries={max_entries}: expected at least 1")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._weigh = weigh
        self._dynamic = dynamic
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: K) -> bool:
        return key in self._data

    @property
    def nbytes(self) -> int:
        """The stored values' total size (weighed again now when values are dynamic)."""
        with self._lock:
            if self._dynamic:
                self._reweigh()
            return self._total

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            self._data.move_to_end(key)
            return hit[0]

    def put(self, key: K, value: V) -> bool:
        """Store ``value`` (most recently used), evicting the least recently used entries
        until the bounds hold; False (and nothing stored) when it alone is too heavy."""
        size = self._weigh(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._total -= old[1]
            if size > self.max_bytes:
                return False
            self._data[key] = (value, size)
            self._total += size
            if self._dynamic:
                self._reweigh()
            self._evict()
            return key in self._data

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        value = self.get(key)
        if value is None:
            value = build()
            self.put(key, value)
        return value

    def evict(self) -> None:
        """Weigh dynamic values again and evict down to the bounds."""
        with self._lock:
            if self._dynamic:
                self._reweigh()
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._total = 0

    def _reweigh(self) -> None:
        total = 0
        for key, (value, _) in list(self._data.items()):
            size = self._weigh(value)
            self._data[key] = (value, size)
            total += size
        self._total = total

    def _evict(self) -> None:
        while self._data and (
            self._total > self.max_bytes or (self.max_entries is not None and len(self._data) > self.max_entries)
        ):
            _, (_, size) = self._data.popitem(last=False)
            self._total -= size
