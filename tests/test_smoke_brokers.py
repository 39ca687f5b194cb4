"""Smoke: each real broker carries one message through FastStream with a consumer group.

These prove the broker fixtures hand out servers that FastStream (murmur's transport
layer) can really use, before any murmur code is involved. Select with ``-m smoke``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats
import nats.js.errors
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.redis import RedisBroker, StreamSub

from tests.support.servers import OwnedServer, kafka_bootstrap

pytestmark = pytest.mark.smoke

TIMEOUT = 20.0  # seconds; generous for a first Kafka group join on a cold broker


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Poll *check* until true: acks and offset commits land after the handler returns."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


def receiver() -> tuple[asyncio.Future[str], Callable[[str], Awaitable[None]]]:
    """A future resolved by the first message body, and the handler that resolves it."""
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def handle(body: str) -> None:
        if not got.done():
            got.set_result(body)

    return got, handle


async def test_redis_stream_consumer_group(redis_url: str, unique: str) -> None:
    got, handle = receiver()
    broker = RedisBroker(redis_url)
    broker.subscriber(stream=StreamSub(unique, group=f"{unique}-g", consumer="c1"))(handle)
    client = aioredis.from_url(redis_url)

    async def acked() -> bool:
        groups = await client.xinfo_groups(unique)
        return len(groups) == 1 and groups[0]["pending"] == 0

    try:
        async with broker:
            await broker.start()
            await broker.publish("hello redis", stream=unique)
            assert await asyncio.wait_for(got, TIMEOUT) == "hello redis"
            await eventually(acked)
    finally:
        await client.delete(unique)
        await client.aclose()


async def test_nats_jetstream_durable_pull(nats_url: str, unique: str) -> None:
    got, handle = receiver()
    broker = NatsBroker(nats_url)
    stream = JStream(unique, subjects=[f"{unique}.>"])
    durable = f"{unique}-d"
    broker.subscriber(
        f"{unique}.in", stream=stream, durable=durable, pull_sub=PullSub(timeout=0.5)
    )(handle)

    try:
        async with broker:
            await broker.start()  # declares the stream and the durable consumer
            js = broker.connection.jetstream()

            async def acked() -> bool:
                info = await js.consumer_info(unique, durable)
                return bool(info.num_ack_pending == 0 and info.delivered.stream_seq == 1)

            ack = await broker.publish("hello nats", f"{unique}.in", stream=unique)
            assert ack.stream == unique
            assert await asyncio.wait_for(got, TIMEOUT) == "hello nats"
            await eventually(acked)
    finally:
        nc = await nats.connect(nats_url)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(unique)
        await nc.close()


async def test_kafka_topic_consumer_group(kafka_url: str, unique: str) -> None:
    got, handle = receiver()
    broker = KafkaBroker(kafka_bootstrap(kafka_url))
    broker.subscriber(unique, group_id=f"{unique}-g", auto_offset_reset="earliest")(handle)

    try:
        async with broker:
            await broker.start()  # FastStream's admin client creates the topic here
            assert unique in await broker.config.admin_client.list_topics()
            await broker.publish("hello kafka", unique)
            assert await asyncio.wait_for(got, TIMEOUT) == "hello kafka"
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(kafka_url))
        await admin.start()
        try:
            with contextlib.suppress(KafkaError):
                await admin.delete_topics([unique])
        finally:
            await admin.close()


async def test_owned_redis_keeps_data_across_kill(owned_redis: OwnedServer, unique: str) -> None:
    url = owned_redis.url
    async with aioredis.from_url(url) as client:
        await client.set(unique, "kept")
    await asyncio.to_thread(owned_redis.kill)
    await asyncio.to_thread(owned_redis.start)
    assert owned_redis.url == url
    async with aioredis.from_url(url) as client:
        assert await client.get(unique) == b"kept"  # AOF with fsync always survives SIGKILL


async def test_owned_nats_keeps_streams_across_restart(
    owned_nats: OwnedServer, unique: str
) -> None:
    nc = await nats.connect(owned_nats.url, reconnect_time_wait=0.1)

    async def reconnected() -> bool:
        return bool(nc.is_connected)

    try:
        js = nc.jetstream()
        await js.add_stream(name=unique, subjects=[unique])
        await js.publish(unique, b"kept")
        await asyncio.to_thread(owned_nats.restart)
        await eventually(reconnected)
        assert (await js.stream_info(unique)).state.messages == 1  # file store in the temp dir
    finally:
        await nc.close()


async def kafka_topics(url: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(url))
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def test_owned_kafka_forgets_topics_on_restart(owned_kafka: OwnedServer, unique: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap(owned_kafka.url))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(unique, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    assert unique in await kafka_topics(owned_kafka.url)
    await asyncio.to_thread(owned_kafka.restart)
    assert unique not in await kafka_topics(owned_kafka.url)  # Tansu is memory-only
