"""A bounded LRU cache whose entries expire, used for market data, features and predictions."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TTLCache(Generic[V]):
    """Least-recently-used cache with a per-entry deadline on a monotonic clock.

    Not thread-safe by design: it lives on one event loop, and every access is synchronous.

    Attributes:
        name: Which cache this is (``market_data``, ``features``, ``predictions``).
        hits: Lookups answered since start.
        misses: Lookups not answered since start.
    """

    def __init__(self, name: str, max_size: int, ttl: float, enabled: bool = True) -> None:
        self.name = name
        self.max_size = max_size
        self.ttl = ttl
        self.enabled = enabled and ttl > 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> V | None:
        """Return the live value for ``key`` and mark it recently used, else None."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def peek(self, key: Hashable, now: float) -> V | None:
        """Return the live value for ``key`` without counting a lookup or touching recency."""
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        return entry[1]

    def put(self, key: Hashable, value: V, now: float, max_age: float | None = None) -> None:
        """Store ``value`` for ``ttl`` seconds (or less, when ``max_age`` is smaller)."""
        if not self.enabled:
            return
        age = self.ttl if max_age is None else min(self.ttl, max_age)
        if age <= 0:
            return
        self._entries[key] = (now + age, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (after a model reload, for instance)."""
        self._entries.clear()
