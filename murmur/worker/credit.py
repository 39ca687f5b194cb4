"""The claim budget that gives a worker backpressure.

A worker may hold at most ``concurrency + prefetch`` claimed, unfinished messages: with
every slot busy that is exactly ``prefetch`` waiting beyond what is running, and with slots
free the extra messages start at once. Fetch loops take credit *before* claiming from the
broker, so the bound holds even while a fetch is in flight.
"""

from __future__ import annotations

import asyncio


class Credit:
    __slots__ = ("_changed", "available", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total
        self._changed = asyncio.Event()

    async def acquire(self, at_most: int) -> int:
        """Wait until some credit is free, then take up to ``at_most`` of it."""
        while self.available <= 0:
            self._changed.clear()
            await self._changed.wait()
        n = min(self.available, max(1, at_most))
        self.available -= n
        return n

    def release(self, n: int = 1) -> None:
        if n > 0:
            self.available += n
            self._changed.set()

    @property
    def in_use(self) -> int:
        return self.total - self.available
