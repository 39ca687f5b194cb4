"""Agents the CLI tests serve with ``murmur worker cliapp`` (cwd = tests/cli).

Names carry ``MURMUR_TEST_PREFIX`` so tests running in parallel never share a topic.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from murmur import AgentError, TaskContext, agent

P = os.environ.get("MURMUR_TEST_PREFIX", "cli")


@agent(name=f"{P}-echo")
async def echo(value: Any) -> Any:
    return value


@agent(name=f"{P}-fail")
async def fail(value: Any) -> Any:
    raise AgentError("failed on purpose", type="Planned")


@agent(name=f"{P}-sleepy")
async def sleepy(value: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    seconds = float(value.get("s", 0.2))
    for step in (1, 2):
        await asyncio.sleep(seconds / 2)
        await ctx.progress(step / 2)
    return {"slept": seconds, "n": value.get("n")}


@agent(name=f"{P}-flagged")
async def flagged(value: dict[str, str]) -> dict[str, str]:
    """Fails until the file ``value["flag"]`` exists; then records ``value["id"]``."""
    if not Path(value["flag"]).exists():
        raise AgentError("flag file missing", type="NoFlag")
    with Path(value["done"]).open("a") as f:
        f.write(value["id"] + "\n")
    return {"ok": "yes"}


# A configured Worker as APP (``murmur worker cliapp:worker``): its own settings apply.
def _configured() -> Any:
    from murmur import Worker

    return Worker(
        broker=os.environ.get("MURMUR_BROKER_URL", "memory://cliapp"),
        agents=[echo],
        consumer_id=f"{P}-configured",
        heartbeat_seconds=1,
    )


worker = _configured()
