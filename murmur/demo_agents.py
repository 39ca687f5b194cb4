"""The agents ``murmur demo`` runs: one fast, one slow with progress, one that fails sometimes.

They are ordinary agents; serve them yourself with
``murmur worker murmur.demo_agents --broker redis://localhost:6379`` and try
``murmur submit wordcount '{"text": "hello brave new world"}' --wait``.
Failures are deterministic per (input, attempt), so every run tells the same story.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import msgspec

from murmur import AgentError, TaskContext, agent


class Text(msgspec.Struct):
    text: str


class WordCount(msgspec.Struct):
    words: int
    chars: int
    top: list[str]


class Doc(msgspec.Struct):
    id: int
    text: str = ""


class Summary(msgspec.Struct):
    id: int
    summary: str
    seconds: float


class Page(msgspec.Struct):
    n: int


class Fetched(msgspec.Struct):
    n: int
    status: int
    attempt: int


@agent(name="wordcount", timeout=10.0)
async def wordcount(doc: Text) -> WordCount:
    """Fast: count words (stands in for any cheap, CPU-light handler)."""
    words = doc.text.lower().split()
    top = [w for w, _ in Counter(words).most_common(3)]
    return WordCount(words=len(words), chars=len(doc.text), top=top)


@agent(name="summarize", timeout=30.0)
async def summarize(doc: Doc, ctx: TaskContext) -> Summary:
    """Slow: 0.2-1.0 s in four steps, reporting progress (stands in for an LLM call)."""
    seconds = 0.2 + (doc.id % 5) * 0.2
    for step in range(1, 5):
        await asyncio.sleep(seconds / 4)
        await ctx.progress(step / 4, f"step {step}/4")
    words = doc.text.split()
    return Summary(id=doc.id, summary=" ".join(words[:8]) or f"doc {doc.id}", seconds=seconds)


class UpstreamUnavailable(Exception):
    """A transient failure: retried by the runtime (the agent has ``retries=2``)."""


@agent(name="scrape", timeout=10.0, retries=2, backoff=0.05, max_backoff=0.2)
async def scrape(page: Page, ctx: TaskContext) -> Fetched:
    """Flaky: ~20% of attempts hit a simulated 503 and are retried; every 50th page is
    a permanent 404 (not retryable) so the summary shows real failures too."""
    await asyncio.sleep(0.01)
    if page.n % 50 == 49:
        raise AgentError(f"page {page.n} not found (simulated)", retryable=False, type="NotFound")
    if random.Random(f"{page.n}:{ctx.attempt}").random() < 0.2:
        raise UpstreamUnavailable(f"upstream returned 503 for page {page.n} (simulated)")
    return Fetched(n=page.n, status=200, attempt=ctx.attempt)
