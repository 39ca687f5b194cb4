"""The completions of one loop turn, written together (see ``KafkaTaskConsumer.complete``).

Each finished task needs its ledger entry and its result on the broker before its offset
may be committed. Written one completion at a time, that was a producer ``send()`` and a
future per record, two wake-ups per task and produce requests split between the records
of one turn and the next. Here the completions of a turn are handed to the producer
together a turn later: one ledger record per ledger partition holds all their entries,
the results follow in the same step (so the same produce request), and each completion
waits on one future that resolves when all of its records are stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from murmur.brokers._kafka_io import CLIENT_ERRORS, unavailable
from murmur.brokers._kafka_ledger import ENTRY_HEADER_SIZE, encode_results
from murmur.brokers.base import Outbound
from murmur.errors import BrokerUnavailable

if TYPE_CHECKING:
    from murmur.brokers.kafka import KafkaBroker

# A ledger record stays well under Kafka's default 1 MB message limit.
MAX_RECORD_BYTES = 256 * 1024

Entry = tuple[bytes, bytes, int]  # task id, result, expires at (unix ms)


class _Completion:
    __slots__ = ("entry", "offset", "partition", "publish", "sent", "stored")

    def __init__(
        self,
        partition: int,
        entry: Entry | None,
        publish: Sequence[Outbound],
        stored: asyncio.Future[int | None],
    ) -> None:
        self.partition = partition
        self.entry = entry
        self.publish = publish
        self.stored = stored
        self.sent: Sequence[asyncio.Future[Any]] = ()
        self.offset: int | None = None

    def fail(self, exc: BaseException) -> None:
        """The first failure is the answer; a caller that was cancelled needs none."""
        if not self.stored.done():
            self.stored.set_exception(exc)


class CompletionWriter:
    """Writes ledger entries and results of the completions of one loop turn together."""

    __slots__ = ("_broker", "_flushes", "_ledger_topic", "_ledger_where", "_pending")

    def __init__(self, broker: KafkaBroker, ledger_topic: str) -> None:
        self._broker = broker
        self._ledger_topic = ledger_topic
        self._ledger_where = f"write to {ledger_topic}"
        self._pending: list[_Completion] = []
        self._flushes: set[asyncio.Task[None]] = set()

    def write(
        self, partition: int, entry: Entry | None, publish: Sequence[Outbound]
    ) -> asyncio.Future[int | None]:
        """Resolves, once the ledger entry and every message are stored, to the offset of
        the ledger record holding ``entry`` (None without one); fails with
        :class:`BrokerUnavailable`."""
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[int | None] = loop.create_future()
        if not self._pending:  # the flush runs after this turn's other completions
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        self._pending.append(_Completion(partition, entry, publish, stored))
        return stored

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        records: list[tuple[asyncio.Future[Any], list[_Completion]]] = []
        try:
            for chunk in _ledger_chunks(batch):
                value = encode_results([c.entry for c in chunk if c.entry is not None])
                records.append((await self._send(chunk[0], value), chunk))
            for c in batch:
                if c.publish:
                    try:
                        c.sent = await self._broker.enqueue(c.publish)
                    except Exception as exc:
                        c.fail(_broker_error(self._broker.publish_where, exc))
            for record, chunk in records:
                try:
                    offset = (await record).offset
                except Exception as exc:
                    failure = _broker_error(self._ledger_where, exc)
                    for c in chunk:
                        c.fail(failure)
                    continue
                for c in chunk:
                    c.offset = offset
            for c in batch:
                for sent in c.sent:
                    try:
                        await sent
                    except Exception as exc:
                        c.fail(_broker_error(self._broker.publish_where, exc))
                if not c.stored.done():  # neither failed nor cancelled
                    c.stored.set_result(c.offset)
        except BaseException as exc:  # a send that raised, shutdown, or a bug: fail the rest
            for record, _ in records:
                record.add_done_callback(_retrieve)
            for c in batch:
                for sent in c.sent:
                    sent.add_done_callback(_retrieve)
                if isinstance(exc, Exception):  # a bug stays a bug: not retried as an outage
                    c.fail(_broker_error(self._ledger_where, exc))
                elif not c.stored.done():
                    c.stored.cancel()
            if not isinstance(exc, Exception):
                raise

    async def _send(self, first: _Completion, value: bytes) -> asyncio.Future[Any]:
        assert first.entry is not None
        return await self._broker.producer.send(  # type: ignore[no-any-return]
            self._ledger_topic, value, key=first.entry[0], partition=first.partition
        )


def _ledger_chunks(batch: Iterable[_Completion]) -> list[list[_Completion]]:
    """The completions with a ledger entry, by partition, in records of at most
    ``MAX_RECORD_BYTES`` (or one larger entry)."""
    by_partition: dict[int, list[_Completion]] = {}
    for c in batch:
        if c.entry is not None:
            by_partition.setdefault(c.partition, []).append(c)
    chunks: list[list[_Completion]] = []
    for group in by_partition.values():
        sizes = [ENTRY_HEADER_SIZE + len(c.entry[0]) + len(c.entry[1]) for c in group]  # type: ignore[index]
        if sum(sizes) <= MAX_RECORD_BYTES:
            chunks.append(group)
            continue
        chunk: list[_Completion] = []
        size = 0
        for c, n in zip(group, sizes, strict=True):
            if chunk and size + n > MAX_RECORD_BYTES:
                chunks.append(chunk)
                chunk, size = [], 0
            chunk.append(c)
            size += n
        chunks.append(chunk)
    return chunks


def _broker_error(where: str, exc: Exception) -> Exception:
    if isinstance(exc, CLIENT_ERRORS) and not isinstance(exc, BrokerUnavailable):
        return unavailable(where, exc)
    return exc


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
