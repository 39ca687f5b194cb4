"""Client.gather throughput with a worker in the same process (no-op tasks).

python benchmarks/gather_inprocess.py redis://127.0.0.1:6379
"""

import asyncio
import sys
import time

from murmur import Client, Worker, agent


@agent(name="noop")
async def noop(x: int) -> int:
    return x


async def main(url):
    w = Worker(broker=url, agents=[noop], concurrency=50, prefetch=50, heartbeat_seconds=0)
    await w.start()
    async with Client(url) as c:
        await c.gather("noop", range(1000), max_in_flight=2000)
        t = time.perf_counter()
        n = 20000
        rs = await c.gather("noop", range(n), max_in_flight=2000)
        dt = time.perf_counter() - t
        assert [r.output for r in rs] == list(range(n))
        print(f"{url}: {n / dt:,.0f} tasks/s (worker and client in one process)")
    await w.stop()


asyncio.run(main(sys.argv[1]))
