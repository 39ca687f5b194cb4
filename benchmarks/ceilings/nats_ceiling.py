"""Hand-written nats-py worker: pull a batch of 50 from a durable JetStream consumer, run
it, publish every result (PubAcks awaited together), then ack every task.

    python benchmarks/ceilings/nats_ceiling.py --url nats://127.0.0.1:4222 \\
        --agent NAME --consumer-id c1

The task stream (``MURMUR_TASKS_<agent>``, work-queue retention) is the one murmur's
Client creates; the ceiling only adds its own durable pull consumer to it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wire import READY, Handler, arguments


async def main() -> None:
    args = arguments()
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    subject = f"murmur.{args.agent}.tasks"
    sub = await js.pull_subscribe(
        subject,
        durable=f"ceiling_{args.agent}",
        stream=f"MURMUR_TASKS_{args.agent}",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_ack_pending=10_000),
    )
    handler = Handler(args.consumer_id)
    print(READY, flush=True)
    while True:
        try:
            msgs = await sub.fetch(args.batch, timeout=1.0)
        except (TimeoutError, NatsTimeout):  # nats-py raises either when idle
            continue
        outs = await asyncio.gather(
            *(handler.run(m.data, (m.headers or {}).get("murmur-sig")) for m in msgs)
        )
        await asyncio.gather(
            *(js.publish(reply_to, body, headers=hdrs) for reply_to, body, hdrs in outs if reply_to)
        )
        for m in msgs:
            await m.ack()


if __name__ == "__main__":
    asyncio.run(main())
