"""Ask the ``chat`` agent something and print its tokens as they stream in.

    python -m examples.llm_agent.client "why is the sky blue?"

Reads the broker from MURMUR_BROKER_URL (default redis://localhost:6379) and signing
keys from MURMUR_SIGNING_KEYS, like every murmur process.
"""

from __future__ import annotations

import asyncio
import os
import sys

from murmur import Client


async def ask(prompt: str, broker: str | None = None, max_tokens: int = 24) -> str:
    """Submit one prompt, print tokens as they arrive, return the final text."""
    url = broker or os.environ.get("MURMUR_BROKER_URL", "redis://localhost:6379")
    async with Client(url) as client:
        handle = await client.submit(
            "chat", {"prompt": prompt, "max_tokens": max_tokens}, events=True, ttl=120
        )
        async for event in handle.events():
            if event.type == "token":
                print(event.payload["text"], end=" ", flush=True)
            elif event.type == "task.retrying":
                print(f"\n[retrying: {event.payload['error']}]", flush=True)
        result = await handle.result(timeout=60)
    print()
    if not result.ok:
        raise SystemExit(f"{result.status}: {result.error}")
    return str(result.output["text"])


if __name__ == "__main__":
    asyncio.run(ask(" ".join(sys.argv[1:]) or "hello"))
