"""The agent chaos and load runs host in real worker processes.

Every run appends ``start``/``end`` lines to ``MURMUR_CHAOS_RUNLOG`` (one short O_APPEND
write each, atomic across processes), so duplicate executions can be counted even for
workers that were SIGKILLed mid-task.
"""

from __future__ import annotations

import asyncio
import os
import time

from murmur import TaskContext, agent

_LOG = os.environ.get("MURMUR_CHAOS_RUNLOG")
_fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _LOG else None


def _record(kind: str, ctx: TaskContext) -> None:
    if _fd is not None:
        os.write(_fd, f"{kind} {ctx.task_id} {ctx.worker_id} {time.time():.3f}\n".encode())


@agent(name=os.environ.get("MURMUR_CHAOS_AGENT", "chaos"), timeout=300)
async def chaos(ms: float, ctx: TaskContext) -> int:
    """Sleep ``ms`` milliseconds (0: a no-op task) and answer with the same number."""
    _record("start", ctx)
    if ms:
        await asyncio.sleep(ms / 1000)
    _record("end", ctx)
    return int(ms)
