"""An in-process worker hosting one throwaway agent, for round trips from other languages."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from murmur import Agent, TaskContext, Worker
from murmur.brokers import create_broker
from murmur.messages import topics

KEY_HEX = "6d75726d75722d646f63732d746573742d6b6579"  # "murmur-docs-test-key"
KEY = bytes.fromhex(KEY_HEX)


def echo_agent(name: str) -> Agent[dict[str, Any], dict[str, Any]]:
    async def handler(task: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        return {"echo": task, "agent": ctx.agent}

    return Agent(handler, name=name)


@contextlib.asynccontextmanager
async def running_worker(broker_url: str, agent: str) -> AsyncIterator[Worker]:
    """A signed worker for ``agent``; its topics are removed afterwards."""
    worker = Worker(
        broker=broker_url, agents=[echo_agent(agent)], signing_key=KEY, heartbeat_seconds=0
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()
        await _cleanup(broker_url, agent)


async def _cleanup(broker_url: str, agent: str) -> None:
    if broker_url.startswith("redis"):
        import redis.asyncio as redis

        client = redis.Redis.from_url(broker_url)
        keys = [k async for k in client.scan_iter(match=f"*{agent}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    else:
        async with create_broker(broker_url) as broker:
            with contextlib.suppress(Exception):
                await broker.purge(topics.task_topic(agent))
            with contextlib.suppress(Exception):
                await broker.purge(topics.dead_topic(agent))


async def run(
    argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command without blocking the event loop the worker lives on."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out.decode(), err.decode())


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MURMUR_")}
    env.update(extra)
    return env
