"""The publisher side of a benchmark: submit tasks, wait for their results.

A :class:`Driver` hides how a system is published to, so every system (murmur, a
hand-written ceiling, another framework) is measured by the same workload code.
:class:`MurmurDriver` drives anything that speaks murmur's wire format through murmur's
own :class:`~murmur.Client`: murmur's workers and the hand-written ceilings alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from murmur.client import Client
from murmur.client.client import TaskHandle
from murmur.messages.envelopes import ResultMessage
from murmur.signing.keyring import KeyInput

Progress = Callable[[int], None]


class Driver(Protocol):
    """What the workloads need from a system's publisher."""

    async def start(self) -> None:
        """Connect and create whatever topics the workers will consume."""

    async def run_batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        """Run one task per value with at most ``window`` unanswered; return how many
        succeeded. ``progress(k)`` is called as results arrive."""

    async def round_trip(self, value: float) -> None:
        """Submit one task and wait for its result."""

    async def close(self) -> None: ...


class MurmurDriver:
    """Publishes with murmur's :class:`~murmur.Client` (batched ``submit_many``).

    Tasks go out in chunks of ``chunk`` once that many answers came back, so the publisher
    costs one broker round trip per chunk, not per task, whatever the system under test.
    """

    def __init__(
        self,
        url: str,
        agent: str,
        *,
        signing_key: KeyInput | None = None,
        chunk: int = 200,
        timeout: float = 120.0,
    ) -> None:
        self.agent = agent
        self.chunk = chunk
        self.timeout = timeout
        # The client id contains the agent's name: cleanup finds the results stream too.
        self.client = Client(url, signing_key=signing_key, client_id=f"{agent}c")

    async def start(self) -> None:
        await self.client.start()
        await self.client.broker.ensure_task_topic(self.agent)

    async def run_batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        window = max(window, self.chunk)
        room, drained = asyncio.Event(), asyncio.Event()
        outstanding = ok = 0
        all_sent = False
        last_result = time.monotonic()

        def done(fut: asyncio.Future[ResultMessage]) -> None:
            nonlocal outstanding, ok, last_result
            outstanding -= 1
            last_result = time.monotonic()
            if not fut.cancelled() and fut.exception() is None and fut.result().ok:
                ok += 1
            progress(1)
            if outstanding <= window - self.chunk:
                room.set()
            if all_sent and outstanding == 0:
                drained.set()

        keep: list[TaskHandle] = []  # a handle must stay referenced until its result
        for i in range(0, len(values), self.chunk):
            while outstanding > window - self.chunk:
                room.clear()
                await self._wait(room, lambda: last_result)
            handles = await self.client.submit_many(self.agent, values[i : i + self.chunk])
            outstanding += len(handles)
            for handle in handles:
                handle._future.add_done_callback(done)  # the Client's own completion hook
            keep += handles
        all_sent = True
        if outstanding:
            await self._wait(drained, lambda: last_result)
        return ok

    async def _wait(self, event: asyncio.Event, last: Callable[[], float]) -> None:
        """Wait for ``event``; fail when no result at all arrived for ``timeout`` seconds."""
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await event.wait()
                return
            except TimeoutError:
                if time.monotonic() - last() > self.timeout:
                    raise TimeoutError(
                        f"no result from {self.agent!r} for {self.timeout:g}s"
                    ) from None

    async def round_trip(self, value: float) -> None:
        handle = await self.client.submit(self.agent, value)
        await handle.result(timeout=self.timeout)

    async def close(self) -> None:
        await self.client.close()


async def run_windowed(
    values: Sequence[float],
    window: int,
    one: Callable[[float], Awaitable[bool]],
    progress: Progress,
) -> int:
    """Run ``one(value)`` for every value with ``window`` of them in flight; count successes.

    For publishers whose client has no batch API (other frameworks): ``window`` coroutines
    each take the next value until none is left.
    """
    it = iter(values)
    ok = 0

    async def lane() -> None:
        nonlocal ok
        for value in it:
            succeeded = await one(value)  # not `ok += await ...`: that reads ok first
            ok += bool(succeeded)
            progress(1)

    await asyncio.gather(*(lane() for _ in range(max(1, min(window, len(values))))))
    return ok
