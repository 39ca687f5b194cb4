"""Hand-written redis-py worker: XREADGROUP COUNT 50, run the batch, then every result
XADD + one XACK in one pipeline (one round trip per batch).

    python benchmarks/ceilings/redis_ceiling.py --url redis://127.0.0.1:6379 \\
        --agent NAME --consumer-id c1
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wire import READY, Handler, arguments


async def main() -> None:
    args = arguments()
    r = aioredis.from_url(args.url)
    stream = f"murmur.{args.agent}.tasks"
    group = stream
    try:
        await r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    handler = Handler(args.consumer_id)
    print(READY, flush=True)
    while True:
        reply = await r.xreadgroup(group, args.consumer_id, {stream: ">"}, args.batch, 1000)
        if not reply:
            continue
        entries = reply[0][1]
        outs = await asyncio.gather(
            *(
                handler.run(f[b"body"], (f.get(b"murmur-sig") or b"").decode() or None)
                for _, f in entries
            )
        )
        pipe = r.pipeline(transaction=False)
        for reply_to, body, headers in outs:
            if reply_to:
                pipe.xadd(reply_to, {"body": body, **headers}, maxlen=10_000, approximate=True)
        pipe.xack(stream, group, *(entry_id for entry_id, _ in entries))
        await pipe.execute()


if __name__ == "__main__":
    asyncio.run(main())
