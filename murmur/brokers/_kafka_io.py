"""Low-level Kafka helpers shared by the broker and the task consumer.

* Error translation: every aiokafka failure surfaces as :class:`BrokerUnavailable`.
* :func:`read_to_end`: read partitions up to their high watermark. The watermark comes
  from a Fetch response, never from ListOffsets, because Tansu answers ListOffsets
  "latest" with the last *batch's* base offset + 1 (see ``kafka.py``, quirk 1).
* Internal topic names and the logging defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from murmur.errors import BrokerUnavailable

# Called with each fetched batch; returning True stops reading that partition.
Sink = Callable[[TopicPartition, Sequence[Any]], bool | None]

READ_TIMEOUT_S = 30.0


def ledger_topic(agent: str) -> str:
    return f"murmur.{agent}.ledger"


def deliveries_topic(agent: str) -> str:
    return f"murmur.{agent}.deliveries"


def removed_topic(topic: str) -> str:
    """Compacted set of ids deleted out of order from ``topic`` (see ``KafkaBroker.delete``)."""
    return f"{topic}.removed"


def consumed_group(topic: str) -> str:
    """The group whose committed offsets mark the deleted head of ``topic``."""
    return f"{topic}.consumed"


# What a broker call can fail with: client errors, sockets, timeouts.
CLIENT_ERRORS = (KafkaError, OSError, TimeoutError)


def unavailable(where: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"kafka {where}: {str(exc) or type(exc).__name__}")


@contextlib.contextmanager
def translated(where: str) -> Iterator[None]:
    """Re-raise aiokafka/network failures as :class:`BrokerUnavailable` naming ``where``."""
    try:
        yield
    except BrokerUnavailable:
        raise
    except CLIENT_ERRORS as exc:
        raise unavailable(where, exc) from exc


def quiet_client_logs() -> None:
    """aiokafka logs every heartbeat hiccup and connection retry; murmur reports failures
    itself, so keep those loggers at ERROR/CRITICAL unless the application set a level."""
    for name, level in (
        ("aiokafka", logging.ERROR),
        ("aiokafka.conn", logging.CRITICAL),
        ("aiokafka.consumer.group_coordinator", logging.CRITICAL),
        ("faststream", logging.WARNING),
    ):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(level)


async def read_to_end(
    consumer: Any,
    starts: Mapping[TopicPartition, int],
    sink: Sink | None = None,
    *,
    timeout: float = READ_TIMEOUT_S,
) -> dict[TopicPartition, int]:
    """Feed ``sink`` every record of each partition from its start to the high watermark.

    A negative start means "the last record only" (``end - 1``). Returns the high
    watermark of every partition. ``consumer`` is a group-less consumer used by nobody
    else meanwhile; its assignment is replaced. A partition whose ``sink`` returns True
    is not read further (its watermark is then the last one seen).
    """
    if not starts:
        return {}
    tps = list(starts)
    ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    hws = dict.fromkeys(tps, 0)
    todo: dict[TopicPartition, int] = {}
    for tp, start in starts.items():
        end = ends.get(tp, 0)
        if end > 0:  # ListOffsets may undercount (Tansu) but 0 means empty everywhere
            todo[tp] = max(end - 1, 0) if start < 0 else start
    if not todo:
        return hws
    consumer.assign(list(todo))
    for tp, offset in todo.items():
        consumer.seek(tp, offset)
    stopped: set[TopicPartition] = set()
    deadline = time.monotonic() + timeout
    try:
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=100)
            for tp, records in batch.items():
                if tp in todo and records and sink is not None and sink(tp, records):
                    stopped.add(tp)
            for tp in list(todo):
                hw = consumer.highwater(tp)
                if hw is None:
                    continue
                hws[tp] = hw
                if tp in stopped or await consumer.position(tp) >= hw:
                    del todo[tp]
            if todo and time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"kafka read of {sorted(todo)} timed out after {timeout:g}s"
                )
    finally:
        # Pause rather than assign([]): aiokafka's fetcher swallows a cancellation that
        # lands while it drops an old assignment, and a stop() right after hangs forever.
        consumer.pause(*consumer.assignment())
    return hws


async def last_records(consumer: Any, tps: Sequence[TopicPartition]) -> dict[TopicPartition, Any]:
    """The last record of each partition (absent when empty); for one-record-per-write logs."""
    last: dict[TopicPartition, Any] = {}

    def keep(tp: TopicPartition, records: Sequence[Any]) -> None:
        last[tp] = records[-1]

    await read_to_end(consumer, dict.fromkeys(tps, -1), keep)
    return last


async def high_watermarks(
    consumer: Any, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """Exact high watermarks (from a Fetch, so Tansu's ListOffsets quirk cannot bite)."""
    return await read_to_end(consumer, dict.fromkeys(tps, -1))


async def stop_quietly(client: Any, timeout: float = 5.0) -> None:
    """Stop an aiokafka client; shutdown failures are not worth raising from close()."""
    if client is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.stop(), timeout)
