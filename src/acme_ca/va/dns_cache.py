"""What a DNS answer says, and a small TTL-honouring cache of it, for the VA's resolver.

`Outcome` is a lookup's answer, as `dns_wire` reads it from a reply (with how long
it may be cached: a positive answer by its TTL, a negative one by its SOA).

`TtlCache` keeps outcomes for that long, never longer than `max_ttl`, and at most
`max_entries` of them: storing one more evicts the oldest. A TTL of 0, or a
`max_ttl` of 0, stores nothing. What to store is the caller's choice: the resolver
stores answers, never failures (SERVFAIL, timeouts). Time is `time.monotonic()`.
No I/O, not thread-safe (one event loop uses it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["DEFAULT_MAX_ENTRIES", "NODATA", "NXDOMAIN", "Outcome", "TtlCache"]

DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """A lookup's answer: the rdatas of the RRset found, or none (NODATA, NXDOMAIN)."""

    nxdomain: bool
    rdatas: tuple[Any, ...]


NODATA = Outcome(nxdomain=False, rdatas=())
NXDOMAIN = Outcome(nxdomain=True, rdatas=())


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values by key until their TTL runs out; insertion order is eviction order."""

    def __init__(
        self,
        *,
        max_ttl: float,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("a cache needs room for at least one entry")
        self._max_ttl = max(0.0, max_ttl)
        self._max_entries = max_entries
        self._clock = clock
        # key -> (expiry on `clock`, value); a dict keeps insertion order.
        self._entries: dict[K, tuple[float, V]] = {}

    @property
    def enabled(self) -> bool:
        return self._max_ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The live value for `key`, or None (an expired one is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        """Keep `value` for min(`ttl`, `max_ttl`) seconds; nothing when that is not positive."""
        lifetime = min(ttl, self._max_ttl)
        if lifetime <= 0:
            return
        entries = self._entries
        entries.pop(key, None)  # re-inserted at the end: the newest
        entries[key] = (self._clock() + lifetime, value)
        while len(entries) > self._max_entries:
            del entries[next(iter(entries))]

    def clear(self) -> None:
        self._entries.clear()
