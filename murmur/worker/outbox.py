"""Fire-and-forget publishing for events and heartbeats.

Observability must never slow or fail a task: messages are queued (bounded), published in
batches by one background task (which keeps their order), retried briefly when the broker
is away and dropped (counted) rather than allowed to pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

import structlog

from murmur.brokers.base import Broker, Outbound
from murmur.errors import BrokerUnavailable

_log = structlog.get_logger("murmur.outbox")


class Outbox:
    def __init__(self, broker: Broker, *, maxsize: int = 10_000, batch: int = 256) -> None:
        self._broker = broker
        self._queue: deque[Outbound] = deque()
        self._maxsize = maxsize
        self._batch = batch
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.published = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="murmur-outbox")

    def put(self, message: Outbound) -> None:
        if len(self._queue) >= self._maxsize:
            self.dropped += 1
            return
        self._queue.append(message)
        self._idle.clear()
        self._wake.set()

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far has been published or dropped."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    async def close(self, timeout: float = 5.0) -> None:
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            n = min(self._batch, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            for attempt in range(3):
                try:
                    await self._broker.publish(batch)
                    self.published += n
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.2 * (attempt + 1))
                except Exception as exc:  # a bad message must not kill the outbox
                    _log.warning("outbox_publish_failed", error=type(exc).__name__)
                    break
            else:
                self.dropped += n
