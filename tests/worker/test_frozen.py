"""A worker whose event loop froze (SIGSTOP, a blocking call, a VM pause) lost its leases.

Another worker reclaimed and ran its claimed work meanwhile. When the frozen one resumes it
must not start the prefetched tasks it no longer owns: it re-checks the ledger and answers
from it (or waits for the new owner) instead of running them a second time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Any

import pytest

from murmur import Client, Worker, agent

LEASE_MS = 1000


class Other:
    """A second worker on its own event loop in a thread, so A's freeze does not stop it."""

    def __init__(self, url: str, agents: list[Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.worker = Worker(
            broker=url,
            agents=agents,
            concurrency=4,
            prefetch=4,
            heartbeat_seconds=0,
            reclaim_min_idle_ms=LEASE_MS,
            consumer_id="other",
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.worker.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _waiting(worker: Worker) -> int:
    return sum(len(sub.waiting) for sub in worker._subs.values())


# Not Kafka: there a claim is partition ownership, and a thawed member learns it was evicted
# only at its next heartbeat, after it started its backlog (docs/reliability.md). memory://
# cannot host a second worker on another event loop.
@pytest.mark.brokers("redis", "nats")
async def test_prefetched_work_reclaimed_during_a_freeze_is_not_run_again(
    broker_url: str, unique: str
) -> None:
    runs: Counter[int] = Counter()
    lock = threading.Lock()
    holding = asyncio.Event()  # the frozen worker runs its first task
    freeze = asyncio.Event()  # the other worker is up: freeze now

    async def job(n: int) -> int:
        with lock:
            runs[n] += 1
            first = threading.current_thread() is threading.main_thread() and not holding.is_set()
        if first:
            holding.set()
            await freeze.wait()
            time.sleep(4 * LEASE_MS / 1000)  # blocks this worker's whole event loop
        return n

    a = agent(name=unique)(job)
    frozen_worker = Worker(
        broker=broker_url,
        agents=[a],
        concurrency=1,
        prefetch=3,
        heartbeat_seconds=0,
        reclaim_min_idle_ms=LEASE_MS,
        consumer_id="frozen",
    )
    other = Other(broker_url, [a])
    await frozen_worker.start()
    try:
        async with Client(broker_url) as client:
            handles = await client.submit_many(unique, [1, 2, 3, 4])
            await asyncio.wait_for(holding.wait(), 10)
            deadline = time.monotonic() + 10
            while frozen_worker.stats.in_flight + _waiting(frozen_worker) < 4:
                assert time.monotonic() < deadline, "the worker did not claim all four"
                await asyncio.sleep(0.01)
            await asyncio.to_thread(other.start)  # it finds everything claimed by the other
            freeze.set()
            results = [await h.result(timeout=30) for h in handles]
            await asyncio.sleep(2 * LEASE_MS / 1000)  # let the thawed worker act on its backlog
    finally:
        await frozen_worker.stop()
        await asyncio.to_thread(other.stop)
    assert [r.output for r in results] == [1, 2, 3, 4]
    # Only the task that was running when the loop froze may run twice.
    assert sum(runs.values()) - len(runs) <= 1, dict(runs)
