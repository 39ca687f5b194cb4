"""FastStream's bare Redis stream subscriber as a peer: worker app and publishing driver.

    faststream run benchmarks.peers.faststream_peer:app

The handler answers on a results stream through ``@publisher``; the driver publishes
with ``broker.publish`` and matches answers by id in its own results subscriber.
``MURMUR_BENCH_FS_WORKERS`` sets the subscriber's ``max_workers`` (1 = FastStream's
default: handlers run one at a time).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Sequence
from typing import Any

from faststream import FastStream
from faststream.redis import RedisBroker, StreamSub

from murmur.bench.drivers import Progress, run_windowed

AGENT = os.environ.get("MURMUR_BENCH_AGENT", "bench")
URL = os.environ.get("MURMUR_BENCH_PEER_URL", "redis://127.0.0.1:6379")
TASKS, RESULTS = f"fs.{AGENT}.tasks", f"fs.{AGENT}.results"
MAX_WORKERS = int(os.environ.get("MURMUR_BENCH_FS_WORKERS", "1"))

broker = RedisBroker(URL, logger=None)
app = FastStream(broker, logger=None)
_extra: dict[str, Any] = {"max_workers": MAX_WORKERS} if MAX_WORKERS > 1 else {}


@broker.subscriber(
    stream=StreamSub(TASKS, group=TASKS, consumer=os.environ.get("MURMUR_BENCH_FS_ID", "c1")),
    **_extra,
)
@broker.publisher(stream=RESULTS)
async def handle(msg: dict[str, Any]) -> dict[str, Any]:
    if msg["ms"]:
        await asyncio.sleep(msg["ms"] / 1000)
    return {"id": msg["id"], "out": msg["ms"]}


@app.after_startup
async def _ready() -> None:
    print("peer ready", flush=True)


class PeerDriver:
    """Publishes with FastStream's ``broker.publish`` and subscribes to the results."""

    def __init__(self, url: str, agent: str) -> None:
        self.broker = RedisBroker(url, logger=None)
        self.tasks, self.results = f"fs.{agent}.tasks", f"fs.{agent}.results"
        self.waiting: dict[int, asyncio.Future[None]] = {}
        self.ids = itertools.count()

        @self.broker.subscriber(stream=StreamSub(self.results, last_id="$"))
        async def on_result(msg: dict[str, Any]) -> None:
            fut = self.waiting.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def start(self) -> None:
        await self.broker.start()

    async def _one(self, ms: float) -> bool:
        i = next(self.ids)
        fut = self.waiting[i] = asyncio.get_running_loop().create_future()
        await self.broker.publish({"id": i, "ms": ms}, stream=self.tasks)
        await asyncio.wait_for(fut, 120)
        return True

    async def run_batch(self, values: Sequence[float], window: int, progress: Progress) -> int:
        # One publish per task, each on a pooled connection: more lanes than redis-py's
        # pool holds (100) fail with "Too many connections".
        return await run_windowed(values, min(window, 64), self._one, progress)

    async def round_trip(self, value: float) -> None:
        await self._one(value)

    async def close(self) -> None:
        await self.broker.stop()
