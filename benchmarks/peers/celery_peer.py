"""Celery (Redis broker and result backend, threads pool) as a peer.

celery -A benchmarks.peers.celery_peer worker -P threads -c 50 -Q celery.<agent>
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from murmur.bench.drivers import Progress

AGENT = os.environ.get("MURMUR_BENCH_AGENT", "bench")
URL = os.environ.get("MURMUR_BENCH_PEER_URL", "redis://127.0.0.1:6379")


def build(url: str, agent: str) -> tuple[Celery, Any]:
    """A Celery app and the benchmark task on fresh names (the worker's and the driver's)."""
    c = Celery(f"murmur_bench_{agent}", broker=url, backend=url)
    c.conf.update(
        task_default_queue=f"celery.{agent}",
        result_expires=600,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )

    @c.task(name=agent)
    def bench(ms: float) -> float:
        if ms:
            time.sleep(ms / 1000)
        return ms

    return c, bench


app, _task = build(URL, AGENT)


@worker_ready.connect
def _ready(**_: Any) -> None:
    print("peer ready", flush=True)


class PeerDriver:
    """``bench.delay`` / ``AsyncResult.get`` (blocking calls: run in one thread)."""

    def __init__(self, url: str, agent: str) -> None:
        self.app, self.task = build(url, agent)

    async def start(self) -> None:
        await asyncio.to_thread(lambda: self.app.connection().ensure_connection(max_retries=3))

    def _batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        ok = 0
        queue: deque[Any] = deque()
        for v in values:
            queue.append(self.task.delay(v))
            if len(queue) >= window:
                queue.popleft().get(timeout=120)
                ok += 1
                progress(1)
        while queue:
            queue.popleft().get(timeout=120)
            ok += 1
            progress(1)
        return ok

    async def run_batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        return await asyncio.to_thread(self._batch, values, min(window, 500), progress)

    async def round_trip(self, value: float) -> None:
        await asyncio.to_thread(lambda: self.task.delay(value).get(timeout=120))

    async def close(self) -> None:
        pass
