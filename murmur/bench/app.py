"""The agent benchmark workers host: ``murmur worker murmur.bench.app``.

One agent serves every workload: its input is a number of milliseconds to sleep (0 is
the no-op task), its output the same number. The agent's name comes from
``MURMUR_BENCH_AGENT`` so that every run (and every parallel test) uses fresh topics and
never drains another run's leftovers.
"""

from __future__ import annotations

import asyncio
import os

from murmur import agent

AGENT_ENV = "MURMUR_BENCH_AGENT"


@agent(name=os.environ.get(AGENT_ENV, "bench"), timeout=300)
async def bench(ms: float) -> float:
    """Sleep ``ms`` milliseconds (0: return at once) and answer with the same number."""
    if ms:
        await asyncio.sleep(ms / 1000)
    return ms
