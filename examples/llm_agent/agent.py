"""An LLM-style agent: streams tokens back as events while it "generates".

``FakeModel`` stands in for a real model client (no network, no weights): it yields
words with a small delay, and now and then raises ``ModelOverloaded`` the way a busy
API answers 429/503. The agent shows the patterns a real one needs:

* ``ctx.emit("token", ...)`` per token, so a caller can render the answer as it grows;
* ``ctx.progress(...)`` now and then, for a progress bar;
* ``retries`` for transient model errors only (``retry_on``), inside the task's timeout;
* ``ctx.log`` for structured logs carrying the task id.

    murmur worker examples.llm_agent.agent --broker redis://localhost:6379
    python -m examples.llm_agent.client "why is the sky blue?"
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator

import msgspec

from murmur import TaskContext, agent


class Prompt(msgspec.Struct):
    prompt: str
    max_tokens: int = 24


class Answer(msgspec.Struct):
    text: str
    tokens: int
    model: str


class ModelOverloaded(Exception):
    """A transient model error: worth retrying."""


_ANSWER = (
    "murmur runs agents behind a broker so that many workers share the load and a slow "
    "answer never blocks a fast one while every token you see arrives as an event"
)
_WORDS = tuple(_ANSWER.split(" "))


class FakeModel:
    """Streams a canned answer word by word; ``delay`` seconds per token."""

    name = "fake-1"

    def __init__(self, delay: float = 0.02, overload_rate: float = 0.0) -> None:
        self.delay = delay
        self.overload_rate = overload_rate

    async def stream(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        if random.random() < self.overload_rate:
            raise ModelOverloaded("model is overloaded, try again")
        rng = random.Random(prompt)  # the same prompt gets the same answer
        start = rng.randrange(len(_WORDS))
        for i in range(max_tokens):
            await asyncio.sleep(self.delay)
            yield _WORDS[(start + i) % len(_WORDS)]


MODEL = FakeModel(
    delay=float(os.environ.get("FAKE_MODEL_DELAY", "0.02")),
    overload_rate=float(os.environ.get("FAKE_MODEL_OVERLOAD_RATE", "0.1")),
)


@agent(name="chat", timeout=60.0, retries=3, retry_on=(ModelOverloaded,), backoff=0.1)
async def chat(req: Prompt, ctx: TaskContext) -> Answer:
    """Answer a prompt, streaming ``token`` events and ``task.progress`` as it goes."""
    ctx.log.info("generating", attempt=ctx.attempt, max_tokens=req.max_tokens)
    await ctx.progress(0.0, "thinking")
    tokens: list[str] = []
    async for token in MODEL.stream(req.prompt, req.max_tokens):
        tokens.append(token)
        await ctx.emit("token", {"index": len(tokens) - 1, "text": token})
        if len(tokens) % 8 == 0:
            await ctx.progress(len(tokens) / req.max_tokens, f"{len(tokens)} tokens")
    return Answer(text=" ".join(tokens), tokens=len(tokens), model=MODEL.name)
