"""Taskiq + taskiq-redis (streams) as a peer: the worker app and the publishing driver.

taskiq worker benchmarks.peers.taskiq_peer:broker --max-async-tasks 50
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from taskiq import TaskiqEvents, TaskiqState
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from murmur.bench.drivers import Progress, run_windowed

AGENT = os.environ.get("MURMUR_BENCH_AGENT", "bench")
URL = os.environ.get("MURMUR_BENCH_PEER_URL", "redis://127.0.0.1:6379")


def build(url: str, agent: str) -> tuple[Any, Any]:
    """A broker and the benchmark task on fresh names (the worker's and the driver's)."""
    b = RedisStreamBroker(
        url, queue_name=f"taskiq.{agent}", consumer_group_name=f"taskiq.{agent}"
    ).with_result_backend(RedisAsyncResultBackend(url, result_ex_time=600))

    @b.task(task_name=agent)
    async def bench(ms: float) -> float:
        if ms:
            await asyncio.sleep(ms / 1000)
        return ms

    return b, bench


broker, _task = build(URL, AGENT)


@broker.on_event(TaskiqEvents.WORKER_STARTUP)
async def _ready(state: TaskiqState) -> None:
    print("peer ready", flush=True)


class PeerDriver:
    """``bench.kiq(ms)`` then ``wait_result`` (the result backend is polled)."""

    def __init__(self, url: str, agent: str, poll: float = 0.001) -> None:
        self.broker, self.task = build(url, agent)
        self.poll = poll

    async def start(self) -> None:
        await self.broker.startup()

    async def _one(self, ms: float) -> bool:
        task = await self.task.kiq(ms)
        result = await task.wait_result(check_interval=self.poll, timeout=120)
        return not result.is_err

    async def run_batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        # Every waiter polls Redis each `poll`: keep the window modest or the polling
        # itself becomes the benchmark.
        return await run_windowed(values, min(window, 200), self._one, progress)

    async def round_trip(self, value: float) -> None:
        await self._one(value)

    async def close(self) -> None:
        await self.broker.shutdown()
