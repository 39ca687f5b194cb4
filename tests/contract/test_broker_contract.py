"""One contract, four brokers (DESIGN §4): the same tests against memory, redis, nats, kafka.

Each test talks to a real server (see tests/support/servers.py) through the public broker
API only, so an adapter passes by behaving like the others, not by sharing code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from murmur.brokers import (
    Broker,
    ClaimState,
    Delivery,
    Outbound,
    Remember,
    TaskConsumer,
    connect_broker,
)
from murmur.messages import topics

RECLAIM_MS = 1500


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Broker]:
    broker = await connect_broker(url)
    try:
        yield broker
    finally:
        await broker.close()


async def consumer(
    broker: Broker,
    agent: str,
    name: str,
    *,
    reclaim_ms: int | None = RECLAIM_MS,
    max_outstanding: int = 100,
) -> TaskConsumer:
    c = broker.task_consumer(
        agent,
        consumer_id=name,
        reclaim_min_idle_ms=reclaim_ms,
        max_outstanding=max_outstanding,
        max_deliveries=5,
    )
    await c.start()
    return c


def task(agent: str, i: int, **headers: str) -> Outbound:
    body = b'{"i": %d}' % i
    return Outbound(
        topics.task_topic(agent),
        body,
        {"content-type": "application/json", **headers},
        key=str(i).encode(),
    )


async def publish_tasks(broker: Broker, agent: str, n: int) -> None:
    await broker.ensure_task_topic(agent)
    batch = 200
    for start in range(0, n, batch):
        await broker.publish([task(agent, i) for i in range(start, min(n, start + batch))])


async def drain(
    c: TaskConsumer,
    until: Callable[[], bool],
    on_delivery: Callable[[Delivery], Awaitable[None]],
    timeout: float = 30.0,
) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting for deliveries"
        for d in await c.fetch(50, 0.2):
            await on_delivery(d)


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_publish_then_consume_keeps_body_and_headers(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        await broker.ensure_task_topic(unique)
        body = bytes(range(256)) + "ü".encode()
        headers = {
            "murmur-sig": "ab" * 32,
            "x-custom": "ä value",
            "content-type": "application/json",
        }
        await broker.publish([Outbound(topics.task_topic(unique), body, headers, key=b"k")])
        c = await consumer(broker, unique, "c1")
        got = await c.fetch(10, 10.0)
        assert len(got) == 1
        d = got[0]
        assert d.body == body
        assert {k: d.headers[k] for k in headers} == headers
        assert d.delivery_count == 1
        await c.complete(d)
        await c.close()


async def test_tasks_published_before_any_consumer_are_kept(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        await publish_tasks(broker, unique, 5)
        c = await consumer(broker, unique, "late")
        seen: list[bytes] = []

        async def take(d: Delivery) -> None:
            seen.append(d.body)
            await c.complete(d)

        await drain(c, lambda: len(seen) >= 5, take)
        assert sorted(seen) == sorted(task(unique, i).body for i in range(5))
        await c.close()


async def test_competing_consumers_each_message_once(broker_url: str, unique: str) -> None:
    n = 1000
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, n)
        brokers = [await connect_broker(broker_url) for _ in range(3)]
        try:
            consumers = [await consumer(b, unique, f"c{i}") for i, b in enumerate(brokers)]
            seen: Counter[bytes] = Counter()
            by_consumer: Counter[str] = Counter()

            async def run(c: TaskConsumer) -> None:
                async def take(d: Delivery) -> None:
                    seen[d.body] += 1
                    by_consumer[c.consumer_id] += 1
                    await c.complete(d)

                await drain(c, lambda: sum(seen.values()) >= n, take, timeout=60)

            await asyncio.gather(*(run(c) for c in consumers))
            assert len(seen) == n
            assert set(seen.values()) == {1}, "a message was delivered twice"

            async def settled() -> bool:
                s = await pub.queue_stats(unique)
                return s.pending == 0 and s.depth == 0

            await wait_for(settled)
            for c in consumers:
                assert c.outstanding == 0
                await c.close()
        finally:
            for b in brokers:
                await b.close()


async def test_dead_member_work_is_reclaimed_with_count_2(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, 10)
        doomed_broker = await connect_broker(broker_url)
        doomed = await consumer(doomed_broker, unique, "doomed")
        taken: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(taken) < 10 and time.monotonic() < deadline:
            taken += await doomed.fetch(10 - len(taken), 1.0)
        assert len(taken) == 10
        # Die without acknowledging: drop the connection, never complete or release.
        await doomed_broker.close()
        died = time.monotonic()

        survivor = await consumer(pub, unique, "survivor")
        again: dict[bytes, int] = {}

        async def take(d: Delivery) -> None:
            again[d.body] = d.delivery_count
            await survivor.complete(d)

        await drain(survivor, lambda: len(again) >= 10, take, timeout=RECLAIM_MS / 1000 + 15)
        elapsed = time.monotonic() - died
        assert elapsed <= RECLAIM_MS / 1000 + 2 + 3, f"reclaim took {elapsed:.1f}s"
        assert set(again) == {d.body for d in taken}
        assert set(again.values()) == {2}
        await survivor.close()


async def test_live_member_keeps_its_lease(broker_url: str, unique: str) -> None:
    n = 48  # spread over every Kafka partition, so no single partition decides the outcome
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, n)
        holder = await consumer(pub, unique, "holder")
        held: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(held) < n and time.monotonic() < deadline:
            held += await holder.fetch(n - len(held), 1.0)
        assert len(held) == n
        other_broker = await connect_broker(broker_url)
        try:
            other = await consumer(other_broker, unique, "other")
            stolen: list[Delivery] = []
            hold_until = time.monotonic() + 3 * RECLAIM_MS / 1000

            async def keep_lease() -> None:
                while time.monotonic() < hold_until:
                    await holder.extend(held)
                    await asyncio.sleep(RECLAIM_MS / 3000)

            async def try_steal() -> None:
                while time.monotonic() < hold_until:
                    stolen.extend(await other.fetch(10, 0.2))

            await asyncio.gather(keep_lease(), try_steal())
            assert stolen == [], "a message held by a live member was redelivered"
            for d in held:
                await holder.complete(d)
            await other.close()
        finally:
            await other_broker.close()
        await holder.close()


async def test_release_hands_work_back_at_once(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, 3)
        first = await consumer(pub, unique, "first", reclaim_ms=60_000)
        got: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            got += await first.fetch(3 - len(got), 1.0)
        await first.release(got)
        assert first.outstanding == 0
        await first.close()
        second = await consumer(pub, unique, "second", reclaim_ms=60_000)
        again: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(again) < 3 and time.monotonic() < deadline:
            again += await second.fetch(3, 1.0)
        assert sorted(d.body for d in again) == sorted(d.body for d in got)
        assert all(d.delivery_count == 2 for d in again)
        for d in again:
            await second.complete(d)
        await second.close()


async def test_fetch_never_exceeds_max_outstanding(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, 50)
        c = await consumer(pub, unique, "bounded", max_outstanding=7)
        held: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(held) < 7 and time.monotonic() < deadline:
            batch = await c.fetch(100, 0.5)
            held += batch
            assert c.outstanding == len(held) <= 7
        assert len(held) == 7
        assert await c.fetch(100, 0.3) == []
        await c.complete(held.pop())
        more = await c.fetch(100, 5.0)
        assert len(more) == 1
        for d in held + more:
            await c.complete(d)
        await c.close()


async def test_dead_letter_keeps_body_and_headers(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as pub:
        await publish_tasks(pub, unique, 1)
        c = await consumer(pub, unique, "dl", reclaim_ms=60_000)
        (d,) = await c.fetch(1, 10.0)
        dead_headers = {
            **d.headers,
            "murmur-dead-reason": "max_deliveries",
            "murmur-delivery-count": "6",
        }
        await c.complete(d, [Outbound(topics.dead_topic(unique), d.body, dead_headers)])

        async def landed() -> bool:
            return (await pub.queue_stats(unique)).dead == 1

        await wait_for(landed)
        (dead,) = await pub.read(topics.dead_topic(unique))
        assert dead.body == d.body
        assert {k: dead.headers[k] for k in dead_headers} == dead_headers
        assert await pub.delete(topics.dead_topic(unique), [dead.id]) == 1
        assert await pub.read(topics.dead_topic(unique)) == []
        stats = await pub.queue_stats(unique)
        assert stats.pending == 0
        await c.close()


async def test_subscription_sees_messages_after_it_opened(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        topic = topics.results_topic(unique)
        await broker.publish_one(topic, b"before")
        sub = await broker.subscribe(topic)
        await broker.publish([Outbound(topic, b"r%d" % i, {"k": "v"}) for i in range(20)])
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 20 and time.monotonic() < deadline:
            got += [m.body for m in await sub.get(1.0)]
        assert got == [b"r%d" % i for i in range(20)]
        await sub.close()


async def test_read_since_and_purge(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        topic = topics.dead_topic(unique)
        await broker.publish([Outbound(topic, b"old")])
        await asyncio.sleep(0.05)
        cut = int(time.time() * 1000)
        await asyncio.sleep(0.05)
        await broker.publish([Outbound(topic, b"new1"), Outbound(topic, b"new2")])
        assert [m.body for m in await broker.read(topic)] == [b"old", b"new1", b"new2"]
        assert [m.body for m in await broker.read(topic, since_ms=cut)] == [b"new1", b"new2"]
        assert [m.body for m in await broker.read(topic, limit=1)] == [b"old"]
        assert await broker.purge(topic) == 3
        assert await broker.read(topic) == []


async def test_ledger_claims_are_exclusive_and_remember_results(
    broker_url: str, unique: str
) -> None:
    async with opened(broker_url) as broker:
        await publish_tasks(broker, unique, 1)
        a = await consumer(broker, unique, "a")
        b = await consumer(broker, unique, "b")
        (claim_a,) = await a.claim(["task-1"])
        assert claim_a.state is ClaimState.CLAIMED
        (again_a,) = await a.claim(["task-1"])
        assert again_a.state is ClaimState.CLAIMED, "a claim is re-entrant for its owner"
        (claim_b,) = await b.claim(["task-1"])
        assert claim_b.state is ClaimState.BUSY
        (d,) = await a.fetch(1, 10.0)
        await a.complete(d, remember=Remember("task-1", b'{"result": 1}', ttl_ms=60_000))
        (done,) = await b.claim(["task-1"])
        assert done.state is ClaimState.DONE
        assert done.result == b'{"result": 1}'
        await a.close()
        await b.close()


async def test_ledger_claim_of_a_dead_owner_is_taken_over(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        await broker.ensure_task_topic(unique)
        a = await consumer(broker, unique, "a", reclaim_ms=1000)
        b = await consumer(broker, unique, "b", reclaim_ms=1000)
        assert (await a.claim(["t"]))[0].state is ClaimState.CLAIMED
        await a.extend([], ["t"])
        assert (await b.claim(["t"]))[0].state is ClaimState.BUSY
        await asyncio.sleep(1.6)  # a stops renewing: its lease runs out
        assert (await b.claim(["t"]))[0].state is ClaimState.CLAIMED
        await b.release([], ["t"])
        assert (await a.claim(["t"]))[0].state is ClaimState.CLAIMED
        await a.close()
        await b.close()


async def test_queue_stats_counts_depth_and_pending(broker_url: str, unique: str) -> None:
    async with opened(broker_url) as broker:
        await publish_tasks(broker, unique, 10)
        c = await consumer(broker, unique, "stats", max_outstanding=4)
        held: list[Delivery] = []
        deadline = time.monotonic() + 10
        while len(held) < 4 and time.monotonic() < deadline:
            held += await c.fetch(4 - len(held), 1.0)

        async def counted() -> bool:
            s = await broker.queue_stats(unique)
            return (s.depth, s.pending) == (6, 4)

        await wait_for(counted)
        for d in held:
            await c.complete(d)

        async def drained() -> bool:
            s = await broker.queue_stats(unique)
            return (s.depth, s.pending, s.dead) == (6, 0, 0)

        await wait_for(drained)
        await c.close()


async def test_presence_lists_live_workers_until_dropped_or_expired(
    broker_url: str, unique: str
) -> None:
    """DESIGN §5: one record per worker, replaced by each beat, gone on drop or expiry."""
    a, b, odd = f"{unique}-a", f"{unique}-b", f"{unique}.odd id/ü"  # odd: not a plain key

    def rec(worker: str, beat: int) -> bytes:
        return b'{"worker_id": "%s", "beat": %d}' % (worker.encode(), beat)

    async with opened(broker_url) as writer, opened(broker_url) as reader:

        async def listed() -> list[bytes]:
            return sorted(r for r in await reader.list_presence() if unique.encode() in r)

        await writer.put_presence(a, rec(a, 1), 60_000)
        await writer.put_presence(a, rec(a, 2), 60_000)  # replaces beat 1
        await writer.put_presence(odd, rec(odd, 1), 60_000)
        t0 = time.monotonic()
        await reader.put_presence(b, rec(b, 1), 1_500)  # two writers, one list
        assert await listed() == sorted([rec(a, 2), rec(b, 1), rec(odd, 1)])

        while rec(b, 1) in await listed():
            assert time.monotonic() - t0 < 10, "a presence record outlived its ttl"
            await asyncio.sleep(0.1)
        assert time.monotonic() - t0 >= 1.3  # not (much) before its 1.5 s ttl either
        assert await listed() == sorted([rec(a, 2), rec(odd, 1)])

        await writer.drop_presence(a)
        await writer.drop_presence(odd)
        await writer.drop_presence(f"{unique}-never-there")  # idempotent, no error
        assert await listed() == []
        await writer.put_presence(a, rec(a, 3), 60_000)  # a restart with the same id
        assert await listed() == [rec(a, 3)]
        await writer.drop_presence(a)
        assert await listed() == []


async def test_ping(broker_url: str) -> None:
    async with opened(broker_url) as broker:
        assert await broker.ping()


async def test_cancelled_fetch_and_get_end_promptly(broker_url: str, unique: str) -> None:
    """Worker.stop() and Client.close() cancel blocked reads: a cancel must never be lost."""
    async with opened(broker_url) as broker:
        await broker.ensure_task_topic(unique)
        c = await consumer(broker, unique, "w")
        sub = await broker.subscribe(topics.results_topic(unique))
        reads = (lambda: c.fetch(10, 5.0), lambda: sub.get(5.0))
        for read in reads:
            for spins in range(6):  # cancel at each early suspension point in turn
                task = asyncio.create_task(read())
                for _ in range(spins):
                    await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    async with asyncio.timeout(4.0):
                        await asyncio.shield(task)
        await sub.close()
        await c.close()


@pytest.mark.parametrize("bad", ["redis:/x", "amqp://localhost", "localhost:6379", "kafak://h:1"])
def test_bad_urls_are_clear_errors(bad: str) -> None:
    from murmur.brokers import create_broker
    from murmur.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="scheme"):
        create_broker(bad)
