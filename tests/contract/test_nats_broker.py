"""NATS JetStream specifics of the broker contract, against a real server (no mocks).

The shared contract suite proves the adapter behaves like the others; these tests pin
what only NATS has: the wire as a plain nats-py client sees it, the durable consumer's
configuration, JetStream's redelivery counters, server restarts and the KV ledger keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy
from nats.js.kv import VALID_KEY_RE

from murmur.brokers import ClaimState, Delivery, Outbound, Remember
from murmur.brokers._nats_ledger import decode_key, encode_key
from murmur.brokers.nats import NatsBroker, NatsTaskConsumer
from murmur.errors import BrokerUnavailable, ConfigurationError
from murmur.messages import topics
from tests.support.servers import OwnedServer, free_port

ODD_TASK_IDS = [
    "plain-id_1",
    "with space",
    "dots.in.the.id",
    "wild*cards>and/slash",
    "ünïcödé-✓-🚀",
    "=looks-encoded",
    "x" * 128,
    "é" * 128,
    "",
]


@contextlib.asynccontextmanager
async def nats_broker(url: str, **options: Any) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(url, **options)
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def raw(nats_url: str, unique: str) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A plain nats-py connection, as a non-Python service would have; removes the test
    agent's streams afterwards so the shared server does not collect them."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        yield nc, js
    finally:
        for stream in (f"MURMUR_TASKS_{unique}", f"MURMUR_DEAD_{unique}"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
        await nc.close()


async def started(
    broker: NatsBroker, agent: str, name: str, *, reclaim_ms: int | None = 1500, **kw: int
) -> NatsTaskConsumer:
    c = broker.task_consumer(
        agent,
        consumer_id=name,
        reclaim_min_idle_ms=reclaim_ms,
        max_outstanding=kw.get("max_outstanding", 100),
    )
    await c.start()
    return c


async def take(c: NatsTaskConsumer, n: int, timeout: float = 10.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await c.fetch(n - len(got), 0.5)
    return got


async def test_plain_nats_py_publisher_and_subscriber_interoperate(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    _, js = raw
    task_topic = topics.task_topic(unique)
    body = b'{"v":1,"task_id":"x1","input":{"s":"\xc3\xbc"}}\x00\xff'
    headers = {"murmur-sig": "cd" * 32, "murmur-kid": "k1", "content-type": "application/json"}
    async with nats_broker(nats_url) as broker:
        await broker.ensure_task_topic(unique)  # what a murmur client does before submitting
        ack = await js.publish(task_topic, body, headers=headers)  # before any consumer
        assert ack.stream == f"MURMUR_TASKS_{unique}"

        reader = await js.subscribe(topics.results_topic(unique), ordered_consumer=True)
        c = await started(broker, unique, "w1")
        (d,) = await take(c, 1)
        assert d.body == body
        assert dict(d.headers) == headers
        assert d.id == str(ack.seq)

        result = Outbound(topics.results_topic(unique), b'{"status":"ok"}', {"murmur-sig": "ef"})
        await c.complete(d, [result])
        msg = await reader.next_msg(timeout=5)
        assert (msg.data, msg.headers) == (result.body, {"murmur-sig": "ef"})
        await reader.unsubscribe()
        await c.close()


async def test_raw_publish_to_an_agent_without_stream_fails_loudly(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    """No stream for an agent nobody ensured: the publisher hears it, nothing is lost."""
    _, js = raw
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish(topics.task_topic(unique), b"{}")
    async with nats_broker(nats_url) as broker:  # murmur's own publish creates the stream
        await broker.publish_one(topics.task_topic(unique), b"{}")
        assert (await broker.queue_stats(unique)).depth == 1


async def test_durable_consumer_config_follows_the_reclaim_window(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    _, js = raw
    stream, durable = f"MURMUR_TASKS_{unique}", f"murmur_{unique}_tasks"
    async with nats_broker(nats_url) as one, nats_broker(nats_url) as two:
        first = await started(one, unique, "a", reclaim_ms=1500)
        info = await js.consumer_info(stream, durable)
        assert info.config.ack_policy == AckPolicy.EXPLICIT
        assert info.config.ack_wait == pytest.approx(1.5)
        assert info.config.max_deliver == -1
        assert info.config.filter_subject == topics.task_topic(unique)

        second = await started(two, unique, "b", reclaim_ms=4000)  # last writer wins
        assert (await js.consumer_info(stream, durable)).config.ack_wait == pytest.approx(4.0)
        third = await started(two, unique, "c", reclaim_ms=None)  # reclaim disabled
        assert (await js.consumer_info(stream, durable)).config.ack_wait == pytest.approx(3600)
        for c in (first, second, third):
            await c.close()


async def test_stream_settings_follow_the_last_writer(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    _, js = raw
    dead = f"MURMUR_DEAD_{unique}"
    async with nats_broker(nats_url, dead_max_age=60) as one:
        await (await started(one, unique, "a")).close()
        assert (await js.stream_info(dead)).config.max_age == pytest.approx(60)
    async with nats_broker(nats_url) as two:
        await (await started(two, unique, "b")).close()
        assert not (await js.stream_info(dead)).config.max_age


async def test_in_progress_acks_prevent_any_redelivery(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    _, js = raw
    async with nats_broker(nats_url) as broker:
        await broker.publish_one(topics.task_topic(unique), b"slow")
        holder = await started(broker, unique, "holder", reclaim_ms=800)
        other = await started(broker, unique, "other", reclaim_ms=800)
        (held,) = await take(holder, 1)
        until = time.monotonic() + 2.5  # three ack_wait periods
        while time.monotonic() < until:
            await holder.extend([held])
            assert await other.fetch(5, 0.25) == []
        info = await js.consumer_info(f"MURMUR_TASKS_{unique}", f"murmur_{unique}_tasks")
        assert (info.num_redelivered, info.num_ack_pending) == (0, 1)
        await holder.complete(held)
        await holder.close()
        await other.close()


async def test_restart_keeps_unacked_work_and_drops_acked_work(
    owned_nats: OwnedServer, unique: str
) -> None:
    topic = topics.task_topic(unique)
    async with nats_broker(owned_nats.url, reconnect_time_wait=0.1) as broker:
        await broker.publish([Outbound(topic, b"%d" % i) for i in range(10)])
        c = await started(broker, unique, "w", reclaim_ms=1000)
        held = await take(c, 7)
        assert len(held) == 7
        acked, finished_late, abandoned = held[:4], held[4], held[5:]
        for d in acked:
            await c.complete(d)
        (claim,) = await c.claim(["survives-restart"])
        assert claim.state is ClaimState.CLAIMED

        async def acks_landed() -> bool:
            return (await broker.queue_stats(unique)).pending == 3

        async def down() -> bool:  # while the server is away, calls fail with one error type
            try:
                await c.fetch(1, 0.1)
            except BrokerUnavailable:
                return True
            return False

        await wait_for(acks_landed)
        await asyncio.to_thread(owned_nats.stop)
        await wait_for(down, timeout=5)
        await asyncio.to_thread(owned_nats.start)
        await wait_for(broker.ping)

        await c.complete(finished_late)  # a delivery from before the restart can still be acked
        await c.close()  # and the other two are abandoned, as by a crashed worker
        await broker.publish_one(topic, b"after")
        survivor = await started(broker, unique, "survivor", reclaim_ms=1000)
        seen: dict[bytes, int] = {}
        deadline = time.monotonic() + 8
        while len(seen) < 6 and time.monotonic() < deadline:
            for d in await survivor.fetch(10, 0.5):
                seen[d.body] = d.delivery_count
                await survivor.complete(d)
        expected = {d.body for d in abandoned} | {b"7", b"8", b"9", b"after"}
        assert set(seen) == expected, "acked work came back or unacked work was lost"
        assert all(seen[d.body] == 2 for d in abandoned)
        assert (await survivor.claim(["survives-restart"]))[0].state is ClaimState.BUSY
        assert await survivor.fetch(10, 1.2) == [], "something was delivered twice"
        await survivor.close()


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_lost_stream_and_consumer_are_recreated(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    """An operator deleting the stream (or a server losing it) does not strand a worker."""
    _, js = raw
    async with nats_broker(nats_url) as broker:
        c = await started(broker, unique, "w")
        await js.delete_stream(f"MURMUR_TASKS_{unique}")
        await broker.publish_one(topics.task_topic(unique), b"again")  # recreates the stream
        got = await take(c, 1, timeout=9)
        assert [d.body for d in got] == [b"again"]
        await c.complete(got[0])
        await c.close()


async def test_ledger_keys_round_trip_odd_task_ids(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    keys = [encode_key(unique, t) for t in ODD_TASK_IDS]
    assert len(set(keys)) == len(keys)
    for task_id, key in zip(ODD_TASK_IDS, keys, strict=True):
        assert VALID_KEY_RE.match(key), key
        assert decode_key(key) == (unique, task_id)
    assert encode_key(unique, "plain-id_1") == f"{unique}.plain-id_1"  # readable when possible

    _, js = raw
    async with nats_broker(nats_url) as broker:
        await broker.publish(
            [Outbound(topics.task_topic(unique), b"%d" % i) for i in range(len(ODD_TASK_IDS))]
        )
        a = await started(broker, unique, "a")
        b = await started(broker, unique, "b")
        assert {c.state for c in await a.claim(ODD_TASK_IDS)} == {ClaimState.CLAIMED}
        assert {c.state for c in await b.claim(ODD_TASK_IDS)} == {ClaimState.BUSY}
        for d, task_id in zip(await take(a, len(ODD_TASK_IDS)), ODD_TASK_IDS, strict=True):
            await a.complete(d, remember=Remember(task_id, task_id.encode() + b"!", 60_000))
        done = await b.claim(ODD_TASK_IDS)
        assert [c.state for c in done] == [ClaimState.DONE] * len(ODD_TASK_IDS)
        assert [c.result for c in done] == [t.encode() + b"!" for t in ODD_TASK_IDS]
        kv = await js.key_value("murmur_ledger")  # a standard KV bucket to NATS tools
        assert (await kv.get(keys[1])).value is not None
        for key in keys:
            await kv.purge(key)
        await a.close()
        await b.close()


async def test_read_delete_and_stats_on_the_task_topic(
    nats_url: str, unique: str, raw: tuple[Client, JetStreamContext]
) -> None:
    """Task streams are work queues (no second consumer allowed): read walks them by get."""
    async with nats_broker(nats_url) as broker:
        topic = topics.task_topic(unique)
        await broker.publish([Outbound(topic, b"t%d" % i, {"h": str(i)}) for i in range(3)])
        stored = await broker.read(topic)
        assert [(m.body, m.headers["h"]) for m in stored] == [
            (b"t0", "0"),
            (b"t1", "1"),
            (b"t2", "2"),
        ]
        assert stored[0].timestamp_ms > time.time() * 1000 - 60_000
        assert await broker.delete(topic, [stored[1].id]) == 1
        assert [m.body for m in await broker.read(topic)] == [b"t0", b"t2"]
        stats = await broker.queue_stats(unique)  # no consumer yet: depth from the stream
        assert (stats.depth, stats.pending, stats.dead) == (2, 0, 0)
        assert await broker.purge(topic) == 2


async def test_delete_on_the_shared_replies_stream_stays_on_its_topic(
    nats_url: str, unique: str
) -> None:
    """Results of every client share one stream: an id from another topic deletes nothing."""
    mine, theirs = topics.results_topic(unique), topics.results_topic(unique + "x")
    async with nats_broker(nats_url) as broker:
        await broker.publish([Outbound(mine, b"m"), Outbound(theirs, b"t")])
        (m,) = await broker.read(mine)
        assert await broker.delete(theirs, [m.id, "not-an-id"]) == 0
        assert await broker.delete(mine, [m.id]) == 1
        assert await broker.read(mine) == []
        assert await broker.purge(theirs) == 1


async def test_connect_to_nothing_fails_fast_without_leaking_the_password() -> None:
    broker = NatsBroker(f"nats://user:s3cret@127.0.0.1:{free_port()}")
    started_at = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1") as err:
        await broker.connect()
    assert time.monotonic() - started_at < 5
    assert "s3cret" not in str(err.value)
    assert not await broker.ping()


def test_urls_options_and_redaction() -> None:
    broker = NatsBroker("nats://u:pw@h1:4222,h2:4223")
    assert broker.display_url == "nats://u:***@h1:4222,nats://u:***@h2:4223"
    assert NatsBroker("tls://h1:4222,tls://h2:4222").display_url == "tls://h1:4222,tls://h2:4222"
    with pytest.raises(ConfigurationError, match="storage"):
        NatsBroker("nats://h:4222", storage="disk")
    with pytest.raises(ConfigurationError, match="option"):
        NatsBroker("nats://h:4222", no_such_option=1)
    with pytest.raises(ConfigurationError, match="not a murmur topic"):
        broker.layout.for_topic("orders.created")


async def test_a_release_that_fails_during_an_outage_frees_the_consumers_room(
    owned_nats: OwnedServer, unique: str
) -> None:
    """The worker lets go of deliveries it hands back even when the nak cannot be sent:
    a consumer still counting them would stay full and fetch nothing; JetStream
    redelivers them after ack_wait instead."""
    topic = topics.task_topic(unique)
    async with nats_broker(owned_nats.url, reconnect_time_wait=0.1) as broker:
        await broker.publish([Outbound(topic, b"1"), Outbound(topic, b"2")])
        c = await started(broker, unique, "w", reclaim_ms=1000, max_outstanding=2)
        held = await take(c, 2)
        await asyncio.to_thread(owned_nats.stop)
        # The client notices the outage when its socket reports it; a nak published before
        # that goes into a dead socket without an error (and is lost: the same redelivery).
        deadline = time.monotonic() + 10
        with contextlib.suppress(BrokerUnavailable):
            while time.monotonic() < deadline:
                broker.check()
                await asyncio.sleep(0.01)
        with pytest.raises(BrokerUnavailable):
            await c.release(held)
        assert c.outstanding == 0
        await asyncio.to_thread(owned_nats.start)
        redelivered: list[Delivery] = []
        deadline = time.monotonic() + 20
        while len(redelivered) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(BrokerUnavailable):  # still reconnecting
                redelivered += await c.fetch(2 - len(redelivered), 0.5)
            await asyncio.sleep(0.05)
        assert sorted(d.body for d in redelivered) == [b"1", b"2"]
        for d in redelivered:
            await c.complete(d)
