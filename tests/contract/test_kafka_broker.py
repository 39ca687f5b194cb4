"""Kafka specifics the shared contract cannot see: offsets, partitions, crashes, ledger.

Every test talks to a real Kafka-compatible server (Tansu by default, see
tests/support/servers.py); nothing is mocked. Crashes are real: a worker process holding
a task is SIGKILLed, so it neither commits nor leaves its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from murmur.brokers import ClaimState, Delivery, Outbound, Remember, connect_broker
from murmur.brokers._kafka_assignor import _Owned, assign_partitions
from murmur.brokers._kafka_io import high_watermarks, ledger_topic
from murmur.brokers._kafka_ledger import encode_result
from murmur.brokers._kafka_offsets import DeliveryRuns, PartitionState
from murmur.brokers.kafka import KafkaBroker, KafkaTaskConsumer
from murmur.errors import BrokerUnavailable
from murmur.messages import topics
from tests.support.crash import hold_and_die

ROOT = Path(__file__).resolve().parents[2]


def bootstrap(url: str) -> str:
    return url.split("://", 1)[1]


@contextlib.asynccontextmanager
async def kafka(url: str, **options: Any) -> AsyncIterator[KafkaBroker]:
    broker = await connect_broker(url, **options)
    assert isinstance(broker, KafkaBroker)
    try:
        yield broker
    finally:
        await broker.close()


async def member(
    broker: KafkaBroker,
    agent: str,
    name: str,
    *,
    reclaim_ms: int = 1000,
    max_outstanding: int = 100,
) -> KafkaTaskConsumer:
    c = broker.task_consumer(
        agent, consumer_id=name, reclaim_min_idle_ms=reclaim_ms, max_outstanding=max_outstanding
    )
    await c.start()
    return c


def task(agent: str, i: int) -> Outbound:
    return Outbound(topics.task_topic(agent), b'{"i": %d}' % i, {"k": "v"}, key=b"task-%d" % i)


async def take(c: KafkaTaskConsumer, n: int, timeout: float = 15.0) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} deliveries arrived"
        got += await c.fetch(n - len(got), 0.5)
    return got


async def committed(url: str, group: str, tp: TopicPartition) -> int | None:
    """The group's committed offset, read the way Tansu allows (quirk 3: no admin call)."""
    client = AIOKafkaConsumer(bootstrap_servers=bootstrap(url), group_id=group)
    await client.start()
    try:
        return await client.committed(tp)  # type: ignore[no-any-return]
    finally:
        await client.stop()


async def partition_count(url: str, topic: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(url))
    await producer.start()
    try:
        return len(await producer.partitions_for(topic))
    finally:
        await producer.stop()


# --------------------------------------------------------------------------- offsets


async def test_out_of_order_completion_commits_only_the_contiguous_prefix(
    kafka_url: str, unique: str
) -> None:
    tp = TopicPartition(topics.task_topic(unique), 0)
    async with kafka(kafka_url, partitions=1) as broker:
        await broker.publish([task(unique, i) for i in range(4)])
        c = await member(broker, unique, "c1")
        got = sorted(await take(c, 4), key=lambda d: d.id)
        assert [d.id for d in got] == ["0:0", "0:1", "0:2", "0:3"]
        for i in (2, 3, 0):  # 1 is still running
            await c.complete(got[i])
        await c.flush()
        assert await committed(kafka_url, tp.topic, tp) == 1
        await c.close()  # closing commits what is contiguous: still 1
        assert await committed(kafka_url, tp.topic, tp) == 1

        again = await member(broker, unique, "c2")
        back = sorted(await take(again, 3), key=lambda d: d.id)
        assert [d.id for d in back] == ["0:1", "0:2", "0:3"]
        assert [d.delivery_count for d in back] == [2, 2, 2]
        assert await again.fetch(10, 0.5) == []
        for d in back:
            await again.complete(d)
        await again.flush()
        assert await committed(kafka_url, tp.topic, tp) == 4
        await again.close()


def test_partition_state_commit_point_never_passes_an_unfinished_offset() -> None:
    state = PartitionState(0)
    state.hand_out([10, 11, 12, 13])
    assert state.commit_point() == 10
    assert not state.finish(12)
    assert not state.finish(13)
    assert state.commit_point() == 10
    assert state.finish(10)
    assert state.commit_point() == 11
    assert state.finish(11)
    assert state.commit_point() == 14
    assert state.outstanding == 0
    assert not state.finish(11)  # a duplicate completion changes nothing


def test_delivery_runs_count_redeliveries_compactly() -> None:
    runs, priors = DeliveryRuns().bumped([5, 6, 7, 8], floor=5)
    assert priors == [0, 0, 0, 0]
    assert runs.runs == ((5, 8, 1),)
    runs, priors = runs.bumped([6, 7], floor=6)  # 5 got committed, 6-7 come back
    assert priors == [1, 1]
    assert runs.runs == ((6, 7, 2), (8, 8, 1))
    assert DeliveryRuns.decode(runs.encode(3)) == runs
    assert runs.pending(7, 100) == (2, 9)
    assert DeliveryRuns.decode(b"not json") == DeliveryRuns()


# --------------------------------------------------------------------------- topics, prefetch


async def test_topics_are_created_with_the_configured_partition_count(
    kafka_url: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with kafka(kafka_url, partitions=3) as broker:
        c = await member(broker, unique, "c")
        assert await partition_count(kafka_url, topics.task_topic(unique)) == 3
        assert await partition_count(kafka_url, f"murmur.{unique}.ledger") == 3
        assert await partition_count(kafka_url, f"murmur.{unique}.deliveries") == 3
        await broker.publish_one(topics.results_topic(unique), b"r")
        assert await partition_count(kafka_url, topics.results_topic(unique)) == 1
        await c.close()
    monkeypatch.setenv("MURMUR_KAFKA_PARTITIONS", "5")
    async with kafka(kafka_url) as broker:
        assert broker.partitions == 5
        await broker.ensure_task_topic(unique + "x")
        assert await partition_count(kafka_url, topics.task_topic(unique + "x")) == 5


async def test_prefetch_is_honoured(kafka_url: str, unique: str) -> None:
    async with kafka(kafka_url, partitions=4) as broker:
        await broker.publish([task(unique, i) for i in range(20)])
        c = await member(broker, unique, "bounded", max_outstanding=3)
        held = await take(c, 3)
        assert c.outstanding == 3
        assert await c.fetch(100, 0.3) == []
        stats = await broker.queue_stats(unique)
        assert (stats.pending, stats.depth) == (3, 17), "the member claimed more than prefetch"
        await c.complete(held.pop())
        more = await c.fetch(100, 5.0)
        assert len(more) == 1
        for d in held + more:
            await c.complete(d)
        await c.close()


# --------------------------------------------------------------------------- wire format


async def test_record_from_a_plain_kafka_producer_is_delivered_byte_exact(
    kafka_url: str, unique: str
) -> None:
    body = bytes(range(256)) + "ü".encode()
    headers = [("murmur-sig", b"ab" * 32), ("murmur-kid", b"0123abcd"), ("x-text", "ä €".encode())]
    async with kafka(kafka_url) as broker:
        await broker.ensure_task_topic(unique)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(kafka_url))
        await producer.start()
        try:  # what a publisher in another language does: one produce, key = task id
            await producer.send_and_wait(
                topics.task_topic(unique), body, key=b"task-1", headers=headers
            )
        finally:
            await producer.stop()
        c = await member(broker, unique, "c")
        (d,) = await take(c, 1)
        assert d.body == body
        assert dict(d.headers) == {k: v.decode() for k, v in headers}
        assert d.delivery_count == 1
        await c.complete(d)
        await c.close()


# --------------------------------------------------------------------------- crashes


async def test_delivery_count_grows_each_time_a_member_dies(kafka_url: str, unique: str) -> None:
    async with kafka(kafka_url, partitions=2) as broker:
        await broker.publish([task(unique, 1)])
        assert await hold_and_die(kafka_url, unique) == 1
        assert await hold_and_die(kafka_url, unique) == 2
        survivor = await member(broker, unique, "survivor")
        (d,) = await take(survivor, 1)
        assert d.delivery_count == 3
        assert d.body == task(unique, 1).body
        await survivor.complete(d)
        await survivor.close()


async def test_release_requeues_with_the_attempt_header(kafka_url: str, unique: str) -> None:
    async with kafka(kafka_url, partitions=1) as broker:
        await broker.publish([task(unique, 1)])
        c = await member(broker, unique, "c")
        (first,) = await take(c, 1)
        await c.release([first])
        (second,) = await take(c, 1)
        assert second.body == first.body
        assert (second.delivery_count, second.headers["murmur-attempt"]) == (2, "2")
        assert second.headers["k"] == "v"
        await c.complete(second)
        await c.close()


async def test_a_running_task_keeps_its_partition_when_a_member_joins(
    kafka_url: str, unique: str
) -> None:
    async with kafka(kafka_url, partitions=2) as broker:
        await broker.publish([task(unique, i) for i in range(10)])  # both partitions
        holder = await member(broker, unique, "holder")
        held = await take(holder, 10)
        assert {d.id.split(":")[0] for d in held} == {"0", "1"}
        other = await member(broker, unique, "other")
        stolen: list[Delivery] = []
        deadline = time.monotonic() + 4  # a join round plus the rebalance it triggers
        while time.monotonic() < deadline:
            stolen += await other.fetch(10, 0.2)
        assert stolen == [], "a partition with running tasks moved to the new member"
        for d in held:
            await holder.complete(d)
        await other.close()
        await holder.close()


# --------------------------------------------------------------------------- ledger


async def test_ledger_result_is_found_by_a_new_member_after_a_rebalance(
    kafka_url: str, unique: str
) -> None:
    async with kafka(kafka_url) as broker:
        await broker.publish([task(unique, 1)])
        a = await member(broker, unique, "a")
        (d,) = await take(a, 1)
        await a.complete(d, remember=Remember("task-1", b'{"out": 1}', ttl_ms=60_000))
        await a.close()
    async with kafka(kafka_url) as broker:  # a new process: nothing in memory
        await broker.publish([task(unique, 2)])
        b = await member(broker, unique, "b")
        (d2,) = await take(b, 1)  # assigned, and the ledger loaded before any hand-out
        assert d2.body == task(unique, 2).body
        done, fresh = await b.claim(["task-1", "task-2"])
        assert (done.state, done.result) == (ClaimState.DONE, b'{"out": 1}')
        assert fresh.state is ClaimState.CLAIMED
        await b.complete(d2)
        await b.close()


async def test_a_new_member_loads_only_the_newest_ledger_records(
    kafka_url: str, unique: str
) -> None:
    """The ledger topic keeps results for its retention (days), far more than the table
    holds (``ledger_results``): an assigned member reads only the newest records of each
    partition, so a rebalance costs the same whatever the history."""
    options = {"partitions": 1, "ledger_results": 20}
    expires = time.time_ns() // 1_000_000 + 600_000
    async with kafka(kafka_url, **options) as broker:
        await broker.ensure_state_topics(unique, await broker.ensure_task_topic_partitions(unique))
        sent = [
            await broker.producer.send(
                ledger_topic(unique),
                encode_result(b"r%d" % i, expires),
                key=b"t%d" % i,
                partition=0,
            )
            for i in range(300)
        ]
        await asyncio.gather(*sent)
    async with kafka(kafka_url, **options) as broker:
        await broker.publish([task(unique, 1)])
        b = await member(broker, unique, "b")
        (d,) = await take(b, 1)  # assigned: the ledger was loaded before the hand-out
        table = broker.ledger_table(unique)
        assert table.records_loaded <= 40, f"read {table.records_loaded} of 300 ledger records"
        newest, older = await b.claim(["t299", "t250"])
        assert (newest.state, newest.result) == (ClaimState.DONE, b"r299")
        assert older.state is ClaimState.CLAIMED  # beyond the newest 20: run again
        await b.complete(d)
        await b.close()


async def test_completions_of_one_loop_turn_share_a_ledger_record(
    kafka_url: str, unique: str
) -> None:
    """A record per finished task cost the worker a producer send per task (a sixth of
    its CPU on no-op tasks): results finished together go into one record per ledger
    partition. Each is still answered on its own, here and by the next owner."""
    n = 20
    async with kafka(kafka_url, partitions=1) as broker:
        await broker.publish([task(unique, i) for i in range(n)])
        a = await member(broker, unique, "a")
        got = await take(a, n)
        ids = [f"task-{d.body.decode().split()[-1].rstrip('}')}" for d in got]
        await asyncio.gather(
            *(
                a.complete(d, remember=Remember(tid, b'{"out": "%s"}' % tid.encode(), 60_000))
                for d, tid in zip(got, ids, strict=True)
            )
        )
        tp = TopicPartition(ledger_topic(unique), 0)
        async with a._reader_lock:
            (end,) = (await high_watermarks(a._reader, [tp])).values()
        assert end == 1, f"{end} ledger records for {n} results finished together"
        claims = await a.claim(ids)
        assert [(c.state, c.result) for c in claims] == [
            (ClaimState.DONE, b'{"out": "%s"}' % tid.encode()) for tid in ids
        ]
        await a.close()
    async with kafka(kafka_url, partitions=1) as broker:  # a new process loads the record
        await broker.publish([task(unique, n)])
        b = await member(broker, unique, "b")
        (d,) = await take(b, 1)
        claims = await b.claim([ids[0], ids[-1]])
        assert [c.state for c in claims] == [ClaimState.DONE, ClaimState.DONE]
        assert claims[1].result == b'{"out": "%s"}' % ids[-1].encode()
        await b.complete(d)
        await b.close()


async def test_a_bug_in_a_completion_is_not_retried_as_an_outage(
    kafka_url: str, unique: str
) -> None:
    """The worker retries BrokerUnavailable for ever; an error that is not the broker's
    (here a result that is not bytes) must reach the completion as itself. A completion
    that shared its write fails with it rather than hang, and is stored when retried."""
    async with kafka(kafka_url, partitions=1) as broker:
        await broker.publish([task(unique, i) for i in range(2)])
        a = await member(broker, unique, "a")
        bad, good = await take(a, 2)
        broken = Remember("task-bad", "not bytes", 60_000)  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            a.complete(bad, remember=broken),
            a.complete(good, remember=Remember("task-good", b"{}", 60_000)),
            return_exceptions=True,
        )
        assert all(isinstance(o, TypeError) for o in outcomes), outcomes
        assert a.outstanding == 2  # neither marked finished: the whole write failed
        await a.complete(good, remember=Remember("task-good", b"{}", 60_000))
        assert a.outstanding == 1
        (done,) = await a.claim(["task-good"])
        assert (done.state, done.result) == (ClaimState.DONE, b"{}")
        await a.close()


async def test_a_result_that_cannot_be_read_back_is_run_again(kafka_url: str, unique: str) -> None:
    """The table holds where a result is; if the record there is not that task's (or is
    gone), the task id is treated as unknown and claimed, never answered wrongly."""
    async with kafka(kafka_url, partitions=1) as broker:
        await broker.publish([task(unique, 1)])
        a = await member(broker, unique, "a")
        (d,) = await take(a, 1)
        await a.complete(d, remember=Remember("task-1", b'{"out": 1}', ttl_ms=60_000))
        (done,) = await a.claim(["task-1"])
        assert (done.state, done.result) == (ClaimState.DONE, b'{"out": 1}')
        table = broker.ledger_table(unique)
        where = table.location("task-1")
        assert where is not None
        expires = time.time_ns() // 1_000_000 + 60_000
        table.remember("task-2", where[0], where[1], expires)  # task-1's record
        table.remember("task-1", where[0], where[1] + 1_000, expires)  # past the end
        again, other = await asyncio.wait_for(a.claim(["task-1", "task-2"]), 30)
        assert again.state is ClaimState.CLAIMED and other.state is ClaimState.CLAIMED
        assert table.location("task-1") is None and table.location("task-2") is None
        await a.close()


# --------------------------------------------------------------------------- repair, errors


async def test_delete_out_of_order_then_at_the_head(kafka_url: str, unique: str) -> None:
    topic = topics.dead_topic(unique)
    async with kafka(kafka_url) as broker:
        await broker.publish([Outbound(topic, b"m%d" % i) for i in range(5)])
        ids = [m.id for m in await broker.read(topic)]
        assert await broker.delete(topic, [ids[1], ids[3], "0:999", "bogus"]) == 2
        assert [m.body for m in await broker.read(topic)] == [b"m0", b"m2", b"m4"]
        assert await broker.delete(topic, [ids[1]]) == 0  # already gone
        assert await broker.delete(topic, [ids[0]]) == 1  # the head moves past 0 and 1
        assert [m.body for m in await broker.read(topic)] == [b"m2", b"m4"]
        assert (await broker.queue_stats(unique)).dead == 2
        assert await broker.purge(topic) == 2
        assert await broker.read(topic) == []
        assert (await broker.queue_stats(unique)).dead == 0


async def test_unreachable_server_fails_fast_and_clearly() -> None:
    from tests.support.servers import free_port

    broker = KafkaBroker(f"kafka://127.0.0.1:{free_port()}", connect_timeout=5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to Kafka at kafka://127\.0\.0\.1"):
        await broker.connect()
    assert time.monotonic() - started < 6
    await broker.close()


# --------------------------------------------------------------------------- assignor


def test_assignor_keeps_busy_partitions_and_balances_the_rest() -> None:
    parts = list(range(12))
    # a owned everything and is running tasks in 3 and 7; b and c just joined
    reports = {"a": _Owned(owned=parts, busy=[3, 7]), "b": _Owned(), "c": _Owned()}
    plan = assign_partitions(parts, reports)
    assert {3, 7} <= set(plan["a"])
    assert sorted(p for ps in plan.values() for p in ps) == parts
    assert sorted(len(ps) for ps in plan.values()) == [4, 4, 4]
    # a dead member reports nothing: everything is dealt to the living
    plan = assign_partitions(parts, {"b": _Owned(owned=plan["b"]), "c": _Owned()})
    assert sorted(len(ps) for ps in plan.values()) == [6, 6]
    # busy partitions stay even when that unbalances the group
    plan = assign_partitions([0, 1], {"a": _Owned(owned=[0, 1], busy=[0, 1]), "b": _Owned()})
    assert plan == {"a": [0, 1], "b": []}


async def test_outage_surfaces_as_broker_unavailable(owned_kafka: Any, unique: str) -> None:
    async with kafka(owned_kafka.url, request_timeout_ms=2000) as broker:
        await broker.ensure_task_topic(unique)
        assert await broker.ping()
        await asyncio.to_thread(owned_kafka.kill)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="kafka publish"):
            await broker.publish([task(unique, 1)])
        assert time.monotonic() - started < 10
        assert not await broker.ping(timeout=1.0)


async def test_a_completion_during_an_outage_fails_clearly_and_is_not_done(
    owned_kafka: Any, unique: str
) -> None:
    """The ledger record is written a loop turn later, with others: a failed write still
    fails its completion with BrokerUnavailable (the worker retries it), the offset is not
    marked finished and the task id is not remembered as done."""
    async with kafka(owned_kafka.url, partitions=1, request_timeout_ms=2000) as broker:
        await broker.publish([task(unique, 1)])
        a = await member(broker, unique, "a")
        (d,) = await take(a, 1)
        await asyncio.to_thread(owned_kafka.kill)
        started = time.monotonic()
        reply = Outbound("murmur.results.x", b"{}")
        with pytest.raises(BrokerUnavailable, match="kafka"):
            await a.complete(d, [reply], Remember("task-1", b'{"out": 1}', ttl_ms=60_000))
        assert time.monotonic() - started < 20
        assert a.outstanding == 1
        assert broker.ledger_table(unique).location("task-1") is None
        await a.close()


async def test_reading_a_stored_result_back_during_an_outage_fails_clearly(
    owned_kafka: Any, unique: str
) -> None:
    """A duplicate's result is read back from the ledger topic; with the server gone the
    claim raises BrokerUnavailable (the worker hands the batch back), it neither hangs
    nor answers without the result."""
    async with kafka(owned_kafka.url, partitions=1, request_timeout_ms=2000) as broker:
        await broker.publish([task(unique, 1)])
        a = await member(broker, unique, "a")
        (d,) = await take(a, 1)
        await a.complete(d, remember=Remember("task-1", b'{"out": 1}', ttl_ms=60_000))
        await asyncio.to_thread(owned_kafka.kill)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="ledger"):
            await a.claim(["task-1"])
        assert time.monotonic() - started < 20
        await a.close()
