"""The one kind of cache recbandit keeps: a dict bounded in entries and in bytes, forgotten whole when full.

Serving caches what repeats (a candidate's wire bytes, its encoded VW line, a feature's token).
Requests decide what goes in, so every cache is bounded by what its entries cost, not only by
their number: the caller says what an entry costs (about the bytes it holds), and when the next
entry would pass either bound the cache starts over. Starting over is cheap, and what repeats
comes back at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """``get(key)`` and ``put(key, value, cost)``; at most ``max_entries`` and ``max_bytes`` of cost."""

    __slots__ = ("max_entries", "max_bytes", "_entries", "_costs", "_bytes", "get")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: dict[K, V] = {}
        self._costs: dict[K, int] = {}
        self._bytes = 0
        self.get = self._entries.get  # the hot path: a bound dict lookup, no Python frame

    def put(self, key: K, value: V, cost: int) -> None:
        """Hold ``value`` under ``key``; an entry it replaces no longer counts."""
        self._bytes -= self._costs.pop(key, 0)
        if (key not in self._entries and len(self._entries) >= self.max_entries) or self._bytes + cost > self.max_bytes:
            self.clear()
        self._entries[key] = value
        self._costs[key] = cost
        self._bytes += cost

    def pop(self, key: K) -> None:
        """Forget ``key``'s entry, if any."""
        self._entries.pop(key, None)
        self._bytes -= self._costs.pop(key, 0)

    def clear(self) -> None:
        self._entries.clear()
        self._costs.clear()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """The cost of the entries held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
