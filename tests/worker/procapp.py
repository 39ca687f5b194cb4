"""Agents hosted by real worker subprocesses in tests/worker/test_processes.py.

Every run appends ``start``/``end`` lines to the file named by ``MURMUR_TEST_RUNLOG``
(O_APPEND writes of one short line are atomic), so a test can count executions per
task across processes, including ones that were killed mid-task.
"""

from __future__ import annotations

import asyncio
import os
import time

from murmur import TaskContext, agent

_LOG = os.environ.get("MURMUR_TEST_RUNLOG")


def _record(kind: str, ctx: TaskContext) -> None:
    if _LOG:
        line = f"{kind} {ctx.task_id} {ctx.worker_id} {time.time():.3f} {ctx.delivery_count}\n"
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@agent(name=os.environ.get("MURMUR_TEST_AGENT", "work"), timeout=120)
async def work(seconds: float, ctx: TaskContext) -> dict[str, object]:
    """Sleep ``seconds`` and answer with who ran it."""
    _record("start", ctx)
    await asyncio.sleep(seconds)
    _record("end", ctx)
    return {"worker": ctx.worker_id, "slept": seconds}
