"""Remove what a test session left on long-lived local brokers.

Tests name their agents ``t`` + 10 hex chars (the ``unique`` fixture); streams, keys and
JetStream streams carry that name. Servers the fixtures start die with the session, but
the machine's own Redis and NATS keep everything: without a sweep every run would leave
thousands of keys and streams behind for the next one (and for CI on the same machine).
Only names this process generated are removed, so parallel sessions never collide.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Collection

NAME = re.compile(r"t[0-9a-f]{10}")


def _ours(text: str, names: Collection[str]) -> bool:
    return any(found in names for found in NAME.findall(text))


def sweep_redis(url: str, names: Collection[str]) -> int:
    import redis

    client = redis.Redis.from_url(url)
    doomed: list[bytes] = []
    removed = 0
    try:
        for key in client.scan_iter(count=2000):
            if _ours(key.decode(errors="replace"), names):
                doomed.append(key)
            if len(doomed) >= 500:
                removed += client.unlink(*doomed)
                doomed.clear()
        if doomed:
            removed += client.unlink(*doomed)
    finally:
        client.close()
    return removed


async def _sweep_nats(url: str, names: Collection[str]) -> int:
    import nats

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        doomed: list[str] = []
        offset = 0
        while True:  # STREAM.NAMES is paged
            reply = await nc.request(
                "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout=10
            )
            page = json.loads(reply.data)
            streams = page.get("streams") or []
            doomed += [s for s in streams if _ours(s, names)]
            offset += len(streams)
            if not streams or offset >= page.get("total", 0):
                break
        for stream in doomed:
            await nc.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=10)
        return len(doomed)
    finally:
        await nc.close()


def sweep_nats(url: str, names: Collection[str]) -> int:
    return asyncio.run(_sweep_nats(url, names))
