"""A member that dies holding a task: a real subprocess, SIGKILLed once it has claimed it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HOLDER = """
import asyncio, sys
from murmur.brokers import connect_broker

async def main(url: str, agent: str) -> None:
    broker = await connect_broker(url)
    c = broker.task_consumer(
        agent, consumer_id="doomed", reclaim_min_idle_ms=1000, max_outstanding=10
    )
    await c.start()
    while not (got := await c.fetch(10, 1.0)):
        pass
    print("HELD", got[0].delivery_count, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def hold_and_die(url: str, agent: str) -> int:
    """Run a worker process until it holds the task, then SIGKILL it; its delivery count."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, url, agent, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    finally:
        proc.kill()
        await proc.wait()
    word, count = line.decode().split()
    assert word == "HELD"
    return int(count)
