"""Worker and Client end to end, in process, on every broker (issue 5).

The worker and client talk through a real broker; only the process boundary is
missing here (tests/worker/test_processes.py covers real subprocesses).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from murmur import Client, TaskContext, TaskFailed, Worker, agent
from murmur.brokers import Outbound, connect_broker
from murmur.brokers.memory import MemoryBroker
from murmur.errors import ConfigurationError, EncodeError
from murmur.messages import Presence, TaskMessage, topics
from murmur.messages.codec import decode_event, decode_result, encode, now_ms

KEY = b"test-signing-key-0123456789abcdef"


@contextlib.asynccontextmanager
async def fleet(url: str, agents: list[Any], **kwargs: Any) -> AsyncIterator[Worker]:
    kwargs.setdefault("heartbeat_seconds", 0)
    kwargs.setdefault("reclaim_min_idle_ms", 3000)
    worker = Worker(broker=url, agents=agents, **kwargs)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def test_round_trip_and_gather(broker_url: str, unique: str) -> None:
    class Doc(msgspec.Struct):
        text: str

    async def summarize(doc: Doc, ctx: TaskContext) -> dict[str, int]:
        return {"words": len(doc.text.split()), "attempt": ctx.attempt}

    a = agent(name=unique)(summarize)
    async with fleet(broker_url, [a], concurrency=20), Client(broker_url) as client:
        assert await client.run(unique, {"text": "one two three"}) == {"words": 3, "attempt": 1}
        docs = [{"text": "w " * i} for i in range(50)]
        results = await client.gather(unique, docs, max_in_flight=20, timeout=30)
        assert [r.output["words"] for r in results] == list(range(50))
        seen = [r.output["words"] async for r in client.as_completed(unique, docs[:10])]
        assert sorted(seen) == list(range(10))


async def test_truly_concurrent(broker_url: str, unique: str) -> None:
    async def sleepy(x: int) -> int:
        await asyncio.sleep(0.1)
        return x

    a = agent(name=unique)(sleepy)
    async with fleet(broker_url, [a], concurrency=50, prefetch=10), Client(broker_url) as client:
        await client.run(unique, -1, timeout=30)  # warm up the group
        t0 = time.perf_counter()
        results = await client.gather(unique, range(500), max_in_flight=500, timeout=30)
        elapsed = time.perf_counter() - t0
    assert [r.output for r in results] == list(range(500))
    # Ideal is 1.0 s (10 waves of 50 x 100 ms); one at a time would take 50 s.
    assert elapsed < 2.5, f"500 x 100 ms at concurrency 50 took {elapsed:.2f}s"


async def test_a_busy_agent_is_not_starved_by_an_idle_one(broker_url: str, unique: str) -> None:
    async def quick(x: int) -> int:
        return x

    async def sleepy(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    agents = [agent(name=unique + "q")(quick), agent(name=unique + "s")(sleepy)]
    async with fleet(broker_url, agents, concurrency=50), Client(broker_url) as client:
        await client.run(unique + "q", 1, timeout=30)  # the quick agent is now idle
        await client.run(unique + "s", 1, timeout=30)
        t0 = time.perf_counter()
        await client.gather(unique + "s", range(200), max_in_flight=200, timeout=30)
        elapsed = time.perf_counter() - t0
    assert elapsed < 1.5, f"200 x 50 ms at concurrency 50 took {elapsed:.2f}s"


async def test_a_freed_slot_goes_to_a_waiting_agent(broker_url: str, unique: str) -> None:
    """A slow agent with a backlog hands each freed slot to its next task, except when
    another agent waits for a slot: then that agent gets it, not the end of the backlog."""
    done_a = 0

    async def busy(x: int) -> int:
        nonlocal done_a
        await asyncio.sleep(0.02)
        done_a += 1
        return x

    async def other(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    a, b = agent(name=unique + "a")(busy), agent(name=unique + "b")(other)
    async with fleet(broker_url, [a, b], concurrency=1, prefetch=4), Client(broker_url) as client:
        await client.run(b.name, 0, timeout=30)  # both groups joined, both agents slow
        await client.run(a.name, 0, timeout=30)
        done_a = 0
        backlog = await client.submit_many(a.name, range(60))
        while done_a < 5:
            await asyncio.sleep(0.01)
        await client.run(b.name, 1, timeout=30)
        ahead = done_a
        await asyncio.gather(*(h.result(timeout=60) for h in backlog))
    assert ahead < 40, f"the waiting agent ran only after {ahead} of the other's 60 tasks"


@pytest.mark.brokers("memory", "redis", "nats")  # Kafka orders per partition only
async def test_a_slow_agent_runs_its_tasks_in_claim_order(broker_url: str, unique: str) -> None:
    started: list[int] = []

    async def slow(x: int) -> int:
        started.append(x)
        await asyncio.sleep(0.005)
        return x

    a = agent(name=unique)(slow)
    async with fleet(broker_url, [a], concurrency=1, prefetch=8), Client(broker_url) as client:
        await client.run(unique, -1, timeout=30)
        handles = await client.submit_many(unique, range(40))
        await asyncio.gather(*(h.result(timeout=60) for h in handles))
    assert started[1:] == list(range(40))


async def test_errors_are_answered_not_raised(broker_url: str, unique: str) -> None:
    async def picky(x: int) -> int:
        if x < 0:
            raise ValueError("negative input")
        return x

    async with fleet(broker_url, [agent(name=unique)(picky)]), Client(broker_url) as client:
        with pytest.raises(TaskFailed) as info:
            await client.run(unique, -1, timeout=30)
        assert info.value.type == "ValueError" and "negative" in info.value.error_message
        with pytest.raises(TaskFailed) as info:
            await client.run(unique, "not an int", timeout=30)
        assert info.value.type == "ValidationError"
        assert await client.run(unique, 5, timeout=30) == 5  # the worker survived both


async def test_events_arrive_in_order_before_the_result(broker_url: str, unique: str) -> None:
    async def chatty(n: int, ctx: TaskContext) -> int:
        for i in range(n):
            await ctx.progress((i + 1) / n, f"step {i + 1}")
        await ctx.emit("note", {"done": True})
        return n

    async with fleet(broker_url, [agent(name=unique)(chatty)]), Client(broker_url) as client:
        handle = await client.submit(unique, 3, events=True)
        events = [e async for e in handle.events()]
        result = await handle.result(timeout=30)
    assert result.output == 3
    types = [e.type for e in events]
    assert types == [
        "task.started",
        "task.progress",
        "task.progress",
        "task.progress",
        "note",
        "task.completed",
    ]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert events[2].payload == {"fraction": 2 / 3, "message": "step 2"}


async def test_hooks_run_and_a_failing_hook_fails_nothing(broker_url: str, unique: str) -> None:
    calls: list[str] = []

    async def work(x: int) -> int:
        if x == 0:
            raise RuntimeError("zero")
        return x

    worker = Worker(broker=broker_url, agents=[agent(name=unique)(work)], heartbeat_seconds=0)

    @worker.on_task_start
    def started(task: TaskMessage[Any]) -> None:
        calls.append(f"start:{task.task_id}")
        raise RuntimeError("hook bug")

    @worker.on_task_complete
    async def completed(task: TaskMessage[Any], result: Any) -> None:
        calls.append(f"ok:{result.output}")

    @worker.on_task_error
    def failed(task: TaskMessage[Any], result: Any) -> None:
        calls.append(f"error:{result.error.type}")

    async with worker, Client(broker_url) as client:
        assert await client.run(unique, 7, timeout=30) == 7
        with pytest.raises(TaskFailed):
            await client.run(unique, 0, timeout=30)
    assert [c for c in calls if not c.startswith("start:")] == ["ok:7", "error:RuntimeError"]
    assert sum(c.startswith("start:") for c in calls) == 2


async def test_prefetch_bounds_claimed_work(broker_url: str, unique: str) -> None:
    release = asyncio.Event()

    async def blocked(x: int) -> int:
        await release.wait()
        return x

    async with (
        fleet(broker_url, [agent(name=unique)(blocked)], concurrency=2, prefetch=3) as worker,
        Client(broker_url) as client,
    ):
        handles = await client.submit_many(unique, range(20))
        broker = worker.broker
        peak = 0
        for _ in range(30):
            stats = await broker.queue_stats(unique)
            peak = max(peak, stats.pending)
            await asyncio.sleep(0.1)
        assert worker.in_flight == 2
        assert peak <= 2 + 3, f"{peak} claimed with concurrency 2 + prefetch 3"
        assert peak >= 2
        release.set()
        results = [await h.result(timeout=30) for h in handles]
    assert [r.output for r in results] == list(range(20))


async def test_stop_hands_unstarted_work_back_at_once(broker_url: str, unique: str) -> None:
    started: list[str] = []

    async def slow(x: int, ctx: TaskContext) -> str:
        started.append(ctx.worker_id)
        await asyncio.sleep(0.5)
        return ctx.worker_id

    a = agent(name=unique)(slow)
    first = Worker(
        broker=broker_url,
        agents=[a],
        concurrency=1,
        prefetch=5,
        heartbeat_seconds=0,
        reclaim_min_idle_ms=60_000,
        consumer_id=unique + "-first",
        shutdown_timeout=10,
    )
    await first.start()
    async with Client(broker_url) as client:
        handles = await client.submit_many(unique, range(6))
        deadline = time.monotonic() + 15
        while not started and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # let it claim its prefetch
        await first.stop()  # finishes the running task, hands the rest back
        t0 = time.monotonic()
        async with fleet(
            broker_url,
            [a],
            concurrency=10,
            consumer_id=unique + "-second",
            reclaim_min_idle_ms=60_000,
        ):
            results = [await h.result(timeout=20) for h in handles]
        elapsed = time.monotonic() - t0
    by = [r.output for r in results]
    assert by.count(unique + "-first") >= 1
    assert by.count(unique + "-second") >= 4
    assert elapsed < 15, "handed-back work waited for the 60 s reclaim window"


async def test_duplicate_task_runs_once_and_is_answered_twice(broker_url: str, unique: str) -> None:
    runs: list[int] = []

    async def count(x: int) -> int:
        runs.append(x)
        await asyncio.sleep(0.2)
        return x * 10

    async with fleet(broker_url, [agent(name=unique)(count)], signing_key=KEY) as worker:
        from murmur.signing import Keyring

        ring = Keyring(KEY)
        broker = await connect_broker(broker_url)
        client_id = uuid.uuid4().hex[:12]
        sub = await broker.subscribe(topics.results_topic(client_id))
        task = TaskMessage(
            task_id="dup-" + unique,
            agent=unique,
            input=4,
            reply_to=topics.results_topic(client_id),
            created_at=now_ms(),
        )
        body = encode(task)
        headers = {"content-type": "application/json", **ring.headers(body)}
        message = Outbound(topics.task_topic(unique), body, headers, key=task.task_id.encode())
        await broker.publish([message])
        await broker.publish([message])  # the same signed task, replayed
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            got += [m.body for m in await sub.get(1.0)]
        await sub.close()
        await broker.close()
        assert worker.stats.duplicates == 1
    assert runs == [4]
    assert len(got) == 2
    first, second = (decode_result(b) for b in got)
    assert first == second and first.output == 40


async def test_client_shows_one_result_per_task(broker_url: str, unique: str) -> None:
    async def echo(x: int) -> int:
        return x

    async with fleet(broker_url, [agent(name=unique)(echo)]), Client(broker_url) as client:
        handle = await client.submit(unique, 1, task_id="same-" + unique)
        first = await handle.result(timeout=30)
        # The same task id again from another client: answered from the ledger.
        async with Client(broker_url) as other:
            again = await other.run(unique, 1, timeout=30)
        assert first.output == again == 1
        assert client.stats.duplicate_results == 0


async def test_unencodable_input_fails_at_submit(broker_url: str, unique: str) -> None:
    async with Client(broker_url) as client:
        with pytest.raises(EncodeError):
            await client.submit(unique, {"x": object()})


async def test_heartbeats_and_lifecycle_events(broker_url: str, unique: str) -> None:
    async def echo(x: int) -> int:
        return x

    broker = await connect_broker(broker_url)
    since = now_ms() - 1000
    worker = Worker(
        broker=broker_url,
        agents=[agent(name=unique)(echo)],
        heartbeat_seconds=0.3,
        consumer_id=unique,
    )
    await worker.start()
    await asyncio.sleep(1.2)
    await worker.stop()
    events = [
        decode_event(m.body)
        for m in await broker.read(topics.HEARTBEATS, since_ms=since, limit=100_000)
    ]
    await broker.close()
    mine = [e for e in events if e.worker_id == unique]
    kinds = [e.type for e in mine]
    assert kinds[0] == "worker.started" and kinds[-1] == "worker.stopped"
    assert kinds.count("worker.heartbeat") >= 2
    beat = next(e for e in mine if e.type == "worker.heartbeat")
    assert beat.payload["agents"] == [unique] and beat.payload["interval_s"] == 0.3
    assert {"host", "pid", "in_flight", "processed", "failed", "uptime_s", "version"} <= set(
        beat.payload
    )


async def test_presence_record_follows_the_worker(broker_url: str, unique: str) -> None:
    """DESIGN §5: listed from start() on, rewritten every beat, gone at once on stop()."""

    async def echo(x: int) -> int:
        return x

    def mine(records: list[bytes]) -> list[Presence]:
        found = [msgspec.json.decode(r, type=Presence) for r in records if unique.encode() in r]
        return [p for p in found if p.worker_id.startswith(unique)]

    broker = await connect_broker(broker_url)
    worker = Worker(
        broker=broker_url,
        agents=[agent(name=unique)(echo)],
        heartbeat_seconds=0.5,
        consumer_id=unique,
    )
    quiet = Worker(  # heartbeats off: no presence either
        broker=broker_url, agents=[agent(name=unique)(echo)], heartbeat_seconds=0,
        consumer_id=f"{unique}-quiet",
    )  # fmt: skip
    try:
        await worker.start()
        await quiet.start()
        (first,) = mine(await broker.list_presence())
        assert first.worker_id == unique and first.agents == [unique]
        assert first.interval_s == 0.5 and first.expires_at - first.beat_at == 3500
        assert first.pid == os.getpid() and first.started_at > 0
        deadline = time.monotonic() + 10
        while (beats := mine(await broker.list_presence())) and beats[0].beat_at == first.beat_at:
            assert time.monotonic() < deadline, "the presence record was not rewritten"
            await asyncio.sleep(0.1)
        assert [p.worker_id for p in beats] == [unique]  # a new beat, still one record
        await worker.stop()
        assert mine(await broker.list_presence()) == []
        assert worker.stats.presence_failures == 0
    finally:
        await worker.stop()
        await quiet.stop()
        await broker.close()


@pytest.mark.brokers("memory")
async def test_presence_failures_are_counted_not_fatal(broker_url: str) -> None:
    async def echo(x: int) -> int:
        return x

    broker = await connect_broker(broker_url)
    assert isinstance(broker, MemoryBroker)
    async with Worker(broker=broker, agents=[agent(echo)], heartbeat_seconds=0.1) as worker:
        broker.simulate_outage()
        deadline = time.monotonic() + 5
        while worker.stats.presence_failures < 2:
            assert time.monotonic() < deadline, "presence failures were not counted"
            await asyncio.sleep(0.05)
        broker.simulate_outage(False)
        broker.hub.presence.clear()  # forget the record written before the outage
        while not await broker.list_presence():  # the loop survived and writes again
            assert time.monotonic() < deadline, "presence not written after the outage"
            await asyncio.sleep(0.05)
    assert await broker.list_presence() == []
    await broker.close()


async def test_client_timeout_leaks_nothing(broker_url: str, unique: str) -> None:
    import gc

    async with Client(broker_url) as client:
        handle = await client.submit(unique, 1)  # no worker: never answered
        with pytest.raises(TimeoutError):
            await handle.result(timeout=0.2)
        with pytest.raises(TimeoutError):
            await client.run(unique, 2, timeout=0.2)
        del handle
        gc.collect()
        assert len(client._handles) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"agents": []}, "at least one agent"),
        ({"concurrency": 0}, "concurrency"),
        ({"prefetch": 0}, "prefetch"),
        ({"heartbeat_seconds": -1}, "heartbeat_seconds"),
        ({"reclaim_min_idle_ms": -5}, "reclaim_min_idle_ms"),
        ({"signing_key": b""}, "empty"),
        ({"signing_key": ()}, "empty keyring"),
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"broker": "amqp://x"}, "scheme"),
        ({"consumer_id": "bad id"}, "consumer_id"),
    ],
)
def test_constructor_validation(kwargs: dict[str, Any], match: str) -> None:
    async def echo(x: int) -> int:
        return x

    args: dict[str, Any] = {"broker": "memory://x", "agents": [agent(echo)], **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        Worker(**args)


def test_agents_as_a_mapping_name_the_topics() -> None:
    async def echo(x: int) -> int:
        return x

    worker = Worker(broker="memory://m", agents={"renamed": agent(echo), "plain": echo})
    assert set(worker.agents) == {"renamed", "plain"}
    assert worker.agents["renamed"].name == "renamed"
