"""The in-process runtime: validation, failures, timeouts, retries, events."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, TypedDict

import msgspec
import pytest
import structlog.testing

from murmur import AgentError, TaskContext, agent
from murmur.messages import RuntimeEvent, TaskMessage
from murmur.messages.codec import decode_task, encode
from murmur.runtime import AgentRuntime, Emitter
from murmur.runtime.agent import Agent


class Doc(msgspec.Struct):
    text: str
    lang: str = "en"


class Summary(msgspec.Struct):
    words: int


def make_task(agent_name: str, input: Any, task_id: str = "t1") -> TaskMessage[msgspec.Raw]:
    return decode_task(encode(TaskMessage(task_id=task_id, agent=agent_name, input=input)))


@pytest.fixture
def events() -> list[RuntimeEvent]:
    return []


@pytest.fixture
async def runtime(events: list[RuntimeEvent]) -> Any:
    rt = AgentRuntime(worker_id="w1", emitter=Emitter([events.append]))
    yield rt
    rt.shutdown()


async def run(rt: AgentRuntime, a: Agent[Any, Any], input: Any) -> Any:
    return await rt.run(a, make_task(a.name, input))


async def test_typed_input_and_output(runtime: AgentRuntime) -> None:
    @agent
    async def summarize(doc: Doc) -> Summary:
        return Summary(words=len(doc.text.split()))

    result = await run(runtime, summarize, {"text": "a b c"})
    assert result.status == "ok"
    assert msgspec.json.decode(result.output) == {"words": 3}
    assert (result.task_id, result.agent, result.worker_id, result.attempt) == (
        "t1",
        "summarize",
        "w1",
        1,
    )
    assert result.finished_at >= result.started_at and result.duration_ms >= 0


@pytest.mark.parametrize(
    ("input", "fragment"),
    [
        ({"text": 5}, "$.text"),
        ({"lang": "en"}, "text"),
        ([1], "object"),
        ({"text": "x", "lang": None}, "$.lang"),
    ],
)
async def test_invalid_input_is_a_validation_error_naming_the_field(
    runtime: AgentRuntime, input: Any, fragment: str
) -> None:
    @agent
    async def summarize(doc: Doc) -> Summary:
        raise AssertionError("must not run")

    result = await run(runtime, summarize, input)
    assert result.status == "error"
    assert result.error.type == "ValidationError"
    assert not result.error.retryable
    assert fragment in result.error.message


@dataclass
class Point:
    x: int
    y: int


class Box(TypedDict):
    w: int


async def test_dataclass_typeddict_and_builtin_inputs(runtime: AgentRuntime) -> None:
    @agent
    def area(p: Point) -> int:
        return p.x * p.y

    @agent
    def width(b: Box) -> int:
        return b["w"]

    @agent
    async def total(xs: list[int]) -> int:
        return sum(xs)

    assert msgspec.json.decode((await run(runtime, area, {"x": 2, "y": 3})).output) == 6
    assert msgspec.json.decode((await run(runtime, width, {"w": 4})).output) == 4
    assert msgspec.json.decode((await run(runtime, total, [1, 2, 3])).output) == 6
    bad = await run(runtime, total, [1, "x"])
    assert bad.error.type == "ValidationError" and "$[1]" in bad.error.message


async def test_output_that_does_not_match_its_type(runtime: AgentRuntime) -> None:
    @agent
    async def liar(x: int) -> Summary:
        return {"words": "many"}  # type: ignore[return-value]

    result = await run(runtime, liar, 1)
    assert result.error.type == "OutputValidationError" and "words" in result.error.message


async def test_unencodable_output(runtime: AgentRuntime) -> None:
    @agent
    async def weird(x: int) -> Any:
        return object()

    result = await run(runtime, weird, 1)
    assert result.status == "error" and result.error.type == "EncodeError"


async def test_handler_exception_is_an_error_result(
    runtime: AgentRuntime, events: list[RuntimeEvent]
) -> None:
    @agent
    async def boom(x: int) -> int:
        raise KeyError("missing thing")

    result = await run(runtime, boom, 1)
    assert result.status == "error"
    assert result.error.type == "KeyError" and "missing thing" in result.error.message
    assert result.error.retryable  # retry_on defaults to Exception
    assert [e.type for e in events if e.type == "task.failed"] == ["task.failed"]


@pytest.mark.parametrize("sync", [False, True])
async def test_hanging_handler_times_out(runtime: AgentRuntime, sync: bool) -> None:
    if sync:

        @agent(name="hang", timeout=0.3)
        def hang(x: int) -> int:
            time.sleep(3)
            return x

    else:

        @agent(name="hang", timeout=0.3)
        async def hang(x: int) -> int:
            await asyncio.sleep(30)
            return x

    t0 = time.monotonic()
    result = await run(runtime, hang, 1)
    assert time.monotonic() - t0 < 1.5
    assert result.error.type == "TimeoutError" and result.error.retryable


async def test_handler_that_ignores_cancellation_is_abandoned(runtime: AgentRuntime) -> None:
    give_up = asyncio.Event()

    @agent(timeout=0.2)
    async def stubborn(x: int) -> int:
        while not give_up.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue
        return x

    t0 = time.monotonic()
    result = await run(runtime, stubborn, 1)
    assert time.monotonic() - t0 < 2.5
    assert result.error.type == "TimeoutError"
    assert runtime.abandoned == 1
    give_up.set()  # let the abandoned handler end so the test loop can close
    await asyncio.sleep(0.1)


async def test_retries_with_backoff_then_success(
    runtime: AgentRuntime, events: list[RuntimeEvent]
) -> None:
    calls: list[float] = []

    @agent(retries=3, backoff=0.05)
    async def flaky(x: int, ctx: TaskContext) -> int:
        calls.append(time.monotonic())
        assert ctx.attempt == len(calls)
        if len(calls) < 3:
            raise ConnectionError("try again")
        return x

    result = await run(runtime, flaky, 7)
    assert result.status == "ok" and result.attempt == 3
    assert calls[1] - calls[0] >= 0.025  # at least half the first backoff (equal jitter)
    assert [e.type for e in events].count("task.retrying") == 2


async def test_retries_exhausted(runtime: AgentRuntime) -> None:
    calls = 0

    @agent(retries=2, backoff=0.01)
    async def always(x: int) -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("down")

    result = await run(runtime, always, 1)
    assert calls == 3 and result.attempt == 3 and result.error.type == "ConnectionError"


async def test_not_retried_when_not_retryable(runtime: AgentRuntime) -> None:
    calls = 0

    @agent(retries=5, backoff=0.01, retry_on=(ConnectionError,))
    async def picky(x: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("bad input")
        return x

    result = await run(runtime, picky, 1)
    assert calls == 1 and result.error.type == "ValueError" and not result.error.retryable

    @agent(retries=5, backoff=0.01)
    async def explicit(x: int) -> int:
        raise AgentError("quota exhausted", retryable=False, type="QuotaExceeded")

    result = await run(runtime, explicit, 1)
    assert (
        result.attempt == 1 and result.error.type == "QuotaExceeded" and not result.error.retryable
    )


async def test_retries_stay_inside_the_timeout(runtime: AgentRuntime) -> None:
    @agent(retries=100, backoff=0.2, max_backoff=0.2, timeout=0.5)
    async def slow_fail(x: int) -> int:
        raise ConnectionError("down")

    t0 = time.monotonic()
    result = await run(runtime, slow_fail, 1)
    assert time.monotonic() - t0 < 1.0
    assert result.status == "error" and result.attempt < 10


async def test_progress_and_custom_events_in_order(
    runtime: AgentRuntime, events: list[RuntimeEvent]
) -> None:
    @agent
    async def chatty(x: int, ctx: TaskContext) -> int:
        await ctx.progress(0.25, "quarter")
        await ctx.emit("token", {"text": "hel"})
        ctx.progress(2.0)  # clamped; awaiting is optional
        await ctx.emit("token", {"text": "lo"})
        return x

    from murmur.runtime import task_sink

    seen: list[RuntimeEvent] = []
    await runtime.run(chatty, make_task("chatty", 1), sink=seen.append)
    assert [e.type for e in seen] == [
        "task.started",
        "task.progress",
        "token",
        "task.progress",
        "token",
        "task.completed",
    ]
    assert [e.seq for e in seen] == list(range(1, 7))
    assert seen[1].payload == {"fraction": 0.25, "message": "quarter"}
    assert seen[3].payload["fraction"] == 1.0
    assert all(e.task_id == "t1" and e.agent == "chatty" and e.worker_id == "w1" for e in seen)
    assert task_sink.get() is None  # the per-task sink does not leak out of the run


async def test_events_from_a_sync_handler_thread(runtime: AgentRuntime) -> None:
    threads: set[int] = set()

    @agent
    def blocking(x: int, ctx: TaskContext) -> int:
        threads.add(threading.get_ident())
        for i in range(5):
            ctx.progress(i / 4)
        return x

    seen: list[RuntimeEvent] = []
    result = await runtime.run(blocking, make_task("blocking", 1), sink=seen.append)
    await asyncio.sleep(0.05)  # thread-posted events land on the loop
    assert result.status == "ok"
    assert threading.get_ident() not in threads
    assert [e.payload["fraction"] for e in seen if e.type == "task.progress"] == [
        0,
        0.25,
        0.5,
        0.75,
        1.0,
    ]


async def test_a_failing_sink_never_fails_the_task() -> None:
    def broken(event: RuntimeEvent) -> None:
        raise RuntimeError("sink down")

    emitter = Emitter([broken])
    rt = AgentRuntime(emitter=emitter)

    @agent
    async def fine(x: int, ctx: TaskContext) -> int:
        await ctx.progress(0.5)
        return x

    result = await rt.run(fine, make_task("fine", 1), sink=broken)
    assert result.status == "ok" and emitter.failures >= 3


async def test_reserved_event_names_are_refused(runtime: AgentRuntime) -> None:
    @agent
    async def sneaky(x: int, ctx: TaskContext) -> int:
        await ctx.emit("task.completed", {})
        return x

    result = await run(runtime, sneaky, 1)
    assert result.error.type == "ValueError" and "task." in result.error.message


async def test_context_carries_deadline_and_delivery_count(runtime: AgentRuntime) -> None:
    seen: dict[str, Any] = {}

    @agent(timeout=10)
    async def introspect(x: int, ctx: TaskContext) -> int:
        seen.update(remaining=ctx.remaining, delivery=ctx.delivery_count, task_id=ctx.task_id)
        return x

    await runtime.run(introspect, make_task("introspect", 1), delivery_count=3)
    assert 9 < seen["remaining"] <= 10 and seen["delivery"] == 3 and seen["task_id"] == "t1"


async def test_cancelling_the_runtime_propagates(runtime: AgentRuntime) -> None:
    started = asyncio.Event()

    @agent
    async def long(x: int) -> int:
        started.set()
        await asyncio.sleep(30)
        return x

    task = asyncio.create_task(run(runtime, long, 1))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_ctx_log_is_bound_to_the_task(runtime: AgentRuntime) -> None:
    @agent(name="chatty")
    async def chatty(x: int, ctx: TaskContext) -> int:
        ctx.log.info("working", step=x)
        ctx.log.info("again")  # bound once, reused
        return x

    with structlog.testing.capture_logs() as logs:
        result = await runtime.run(chatty, make_task("chatty", 3, task_id="t-log"))
    assert result.status == "ok"
    lines = [e for e in logs if e["event"] in ("working", "again")]
    assert len(lines) == 2
    for line in lines:
        assert (line["task_id"], line["agent"], line["attempt"]) == ("t-log", "chatty", 1)
    assert lines[0]["step"] == 3
