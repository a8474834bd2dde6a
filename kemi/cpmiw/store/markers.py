"""The AS markers already honoured, in Redis: one record for every proxy, kept over restarts.

A marker (core/marker.py) is honoured once: a second use is a replay. Each proxy keeps its own
record too (htable `markers`, free to read), but only a record every proxy reads refuses a replay
sent to another proxy, or to this one after a restart. Redis key: `cpmiw:2:marker:<nonce>`, set
if absent (SET NX) and expiring when the marker can no longer verify anyway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

KEY = "cpmiw:2:marker:"
# Longer than a marker lives: clocks of proxies may differ by this much (s).
CLOCK_SKEW = 30

# Sends one command about a key and returns its reply; StoreError when Redis cannot be asked.
Execute = Callable[..., Any]


class HonouredMarkers:
    def __init__(self, execute: Execute, marker_ttl: int) -> None:
        self._execute = execute
        self._keep = marker_ttl + CLOCK_SKEW

    def first_use(self, nonce: str) -> bool:
        """Records the marker named `nonce` as honoured; False when it was already."""
        key = KEY + nonce
        return self._execute(key, "SET", key, "1", "NX", "EX", self._keep) is not None
