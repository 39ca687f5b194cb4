"""Hand-written aiokafka worker: ``getmany`` up to 50 records from the agent's consumer
group, run them, produce every result (sends awaited together), then commit the offsets.

    python benchmarks/ceilings/kafka_ceiling.py --url kafka://127.0.0.1:9092 \\
        --agent NAME --consumer-id c1

Client settings match murmur's Kafka adapter where they change latency or cost
(``fetch_max_wait_ms=100``, ``linger_ms=0``, ``acks="all"``), so the two are compared on
the same footing.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wire import READY, Handler, arguments


async def main() -> None:
    args = arguments()
    bootstrap = args.url.split("://", 1)[1].split("/", 1)[0]
    topic = f"murmur.{args.agent}.tasks"
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=topic,
        client_id=args.consumer_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        max_poll_records=args.batch,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await producer.start()
    await consumer.start()
    handler = Handler(args.consumer_id)
    print(READY, flush=True)
    while True:
        batches = await consumer.getmany(timeout_ms=1000, max_records=args.batch)
        records = [r for rs in batches.values() for r in rs]
        if not records:
            continue
        outs = await asyncio.gather(*(handler.run(r.value, _sig(r.headers)) for r in records))
        sent = [
            await producer.send(reply_to, body, headers=[(k, v.encode()) for k, v in h.items()])
            for reply_to, body, h in outs
            if reply_to
        ]
        await asyncio.gather(*sent)
        await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items()})


def _sig(headers: tuple[tuple[str, bytes], ...] | None) -> str | None:
    for k, v in headers or ():
        if k == "murmur-sig":
            return v.decode()
    return None


if __name__ == "__main__":
    asyncio.run(main())
