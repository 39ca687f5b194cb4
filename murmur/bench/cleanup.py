"""Remove what a benchmark fleet left on the broker (best effort).

Every fleet runs on a fresh agent name (``bench`` + 10 hex digits), so on Redis every key
whose name contains it is the benchmark's own: task stream, ledger entries, the
publisher's results stream and the peers' queues. On NATS the agent's task and
dead-letter streams are deleted. Kafka topics are left in place (the runner's private
Tansu broker is discarded whole; on a shared cluster, delete ``murmur.bench*`` topics
with your usual tooling).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from murmur.brokers.urls import broker_kind

_AGENT = re.compile(r"bench[0-9a-f]{10}")


async def remove_agent_data(url: str, agent: str) -> None:
    """Delete the benchmark's keys or streams for ``agent``; never raises."""
    if not _AGENT.fullmatch(agent):  # never widen a pattern to someone else's keys
        return
    with contextlib.suppress(Exception):
        kind = broker_kind(url)
        if kind == "redis":
            await _redis(url, agent)
        elif kind == "nats":
            await _nats(url, agent)


async def _redis(url: str, agent: str) -> None:
    import redis.asyncio as aioredis

    r: Any = aioredis.from_url(url)
    try:
        batch: list[bytes] = []
        async for key in r.scan_iter(match=f"*{agent}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                await r.unlink(*batch)
                batch.clear()
        if batch:
            await r.unlink(*batch)
    finally:
        await r.aclose()


async def _nats(url: str, agent: str) -> None:
    import nats

    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        for stream in (f"MURMUR_TASKS_{agent}", f"MURMUR_DEAD_{agent}"):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
    finally:
        await nc.close()
