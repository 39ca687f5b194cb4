"""The Kafka task consumer: one member of an agent's consumer group (see ``kafka.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import ConsumerRebalanceListener
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    InvalidSessionTimeoutError,
    KafkaError,
)
from aiokafka.structs import TopicPartition

from murmur.brokers._kafka_assignor import BusyStickyAssignor
from murmur.brokers._kafka_io import (
    CLIENT_ERRORS,
    deliveries_topic,
    high_watermarks,
    last_records,
    ledger_topic,
    read_to_end,
    stop_quietly,
    translated,
    unavailable,
)
from murmur.brokers._kafka_ledger import decode_results
from murmur.brokers._kafka_offsets import DeliveryRuns, PartitionState
from murmur.brokers._kafka_writer import CompletionWriter
from murmur.brokers.base import Claim, ClaimState, Delivery, Outbound, Remember, TaskConsumer
from murmur.errors import BrokerUnavailable
from murmur.messages import headers as wire
from murmur.messages import topics

if TYPE_CHECKING:
    from murmur.brokers.kafka import KafkaBroker

log = logging.getLogger("murmur.brokers.kafka")

# Kafka's default group.min.session.timeout.ms; used when the broker refuses a shorter one.
KAFKA_MIN_SESSION_MS = 6_000
# Default ceiling of the derived session timeout (see session_timeout_ms).
MAX_DERIVED_SESSION_MS = 10_000
_DAY_MS = 86_400_000
COMMIT_INTERVAL_S = 0.02
_READ_BACK_TIMEOUT_S = 10.0  # reading a duplicate's stored result back from the ledger


def session_timeout_ms(lease_ms: int, override: int | None = None) -> int:
    """The group session timeout: a dead member's partitions move after about this long.

    Kafka tells a dead member from a slow one by missed heartbeats, which aiokafka sends
    from the background while a task runs, so the session need not be as long as the
    lease: ``min(lease, 10 s)`` reclaims a dead worker's tasks no later than the other
    brokers do, and keeps group joins short (Tansu holds every JoinGroup round for about
    half the session timeout). ``override`` (the broker's ``session_timeout_ms``) wins,
    e.g. for handlers that block the event loop for longer than 10 s.
    """
    if override is not None:
        return override
    return max(1_000, min(lease_ms, MAX_DERIVED_SESSION_MS))


class KafkaDelivery(Delivery):
    """A task record handed out by :class:`KafkaTaskConsumer`; ``id`` is ``partition:offset``."""

    __slots__ = ("done", "key", "offset", "partition", "state")

    def __init__(
        self,
        record: Any,
        headers: dict[str, str],
        delivery_count: int,
        state: PartitionState,
    ) -> None:
        super().__init__(
            record.value or b"", headers, delivery_count, f"{record.partition}:{record.offset}"
        )
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.key: bytes | None = record.key
        self.state = state
        self.done = False


def _decode_headers(raw: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") if v else "" for k, v in raw}


def _attempt(headers: dict[str, str]) -> int:
    """The ``murmur-attempt`` a requeued copy carries (1 for an original)."""
    raw = headers.get(wire.ATTEMPT)
    if raw is None:
        return 1
    try:
        return max(1, int(raw))
    except ValueError:
        return 1


def _leave_even_at_generation_zero(consumer: Any) -> None:
    """aiokafka sends LeaveGroup on stop only when ``generation > 0``; Kafka numbers
    generations from 1, Tansu from 0, so without this a member of Tansu's first
    generation leaves silently and the group waits a whole session timeout for it."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if getattr(coordinator, "generation", None) == 0 and getattr(coordinator, "member_id", ""):
        coordinator.generation = 1


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaTaskConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        await self._owner._on_assigned(assigned)


class KafkaTaskConsumer(TaskConsumer):
    """One AIOKafkaConsumer in the agent's group, plus a group-less reader for its state.

    The member joins the group on its first :meth:`fetch`, not in :meth:`start`: a
    consumer that never fetches must not own partitions it will never read.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
    ) -> None:
        super().__init__(
            agent=agent,
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
        )
        self._broker = broker
        self._topic = topics.task_topic(agent)
        self._deliveries_topic = deliveries_topic(agent)
        self._ledger_topic = ledger_topic(agent)
        self._ledger = broker.ledger_table(agent)
        self._writer = CompletionWriter(broker, self._ledger_topic)
        self._session_ms = session_timeout_ms(self.lease_ms, broker.session_timeout_ms)
        self._parts: dict[int, PartitionState] = {}
        self._limbo: dict[int, PartitionState] = {}  # revoked, maybe handed back
        self._outstanding = 0
        self._consumer: Any = None
        self._reader: Any = None
        self._joined = False
        self._paused = False
        self._started = False
        self._closed = False
        self._fetch_lock = asyncio.Lock()
        self._reader_lock = asyncio.Lock()  # one read of the reader's topics at a time
        self._commit_lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None

    # lifecycle -----------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return self._outstanding

    async def start(self) -> None:
        if self._started:
            return
        broker = self._broker
        partitions = await broker.ensure_task_topic_partitions(self.agent)
        await broker.ensure_state_topics(self.agent, partitions)
        self._consumer = await self._new_consumer(self._session_ms)
        try:
            self._reader = await broker.new_reader()
        except BaseException:
            await stop_quietly(self._consumer)
            raise
        self._committer = asyncio.create_task(
            self._commit_loop(), name=f"murmur-commit-{self._topic}"
        )
        self._started = True
        broker.register(self)

    async def _new_consumer(self, session_ms: int) -> Any:
        consumer = self._broker.builder(
            group_id=self._topic,
            client_id=f"murmur-{self.consumer_id}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 3),
            rebalance_timeout_ms=max(session_ms, 30_000),
            max_poll_interval_ms=_DAY_MS,  # never leave the group because a task is slow
            fetch_max_wait_ms=self._broker.fetch_max_wait_ms,
            partition_assignment_strategy=(BusyStickyAssignor(self._report),),
        )
        with translated(f"consumer start ({self._broker.display_url})"):
            await consumer.start()
        return consumer

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            async with self._fetch_lock:
                with contextlib.suppress(BrokerUnavailable, TimeoutError):
                    await asyncio.wait_for(self._commit(), 5.0)
                if self._committer is not None:
                    self._committer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._committer
                _leave_even_at_generation_zero(self._consumer)
                await stop_quietly(self._consumer)  # sends LeaveGroup: reassignment is immediate
                await stop_quietly(self._reader)
        self._parts.clear()
        self._limbo.clear()
        self._outstanding = 0
        self._broker.unregister(self)

    def _is_closed(self) -> bool:
        return self._closed

    # fetching ------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        if self._closed or not self._started:
            return []
        deadline = time.monotonic() + timeout
        async with self._fetch_lock:
            if self._is_closed():  # closed while we waited for the lock
                return []
            room = self.max_outstanding - self._outstanding
            self._set_paused(room <= 0)
            limit = min(max_messages, room)
            if limit <= 0:
                return []
            if not self._joined:
                self._consumer.subscribe([self._topic], listener=_Listener(self))
                self._joined = True
            wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
            try:
                batch = await self._consumer.getmany(timeout_ms=wait_ms, max_records=limit)
            except InvalidSessionTimeoutError:
                await self._fall_back_session_timeout()
                return []
            except (KafkaError, OSError) as exc:
                raise BrokerUnavailable(f"kafka fetch from {self._topic}: {exc}") from exc
            if not batch:
                return []
            return await self._hand_out(batch)

    async def _hand_out(self, batch: dict[TopicPartition, list[Any]]) -> list[Delivery]:
        """Record the hand-out in the deliveries topic, then turn records into deliveries."""
        staged: list[tuple[PartitionState, int, list[Any], DeliveryRuns, list[int]]] = []
        sends = []
        producer = self._broker.producer
        for tp, records in batch.items():
            state = self._parts.get(tp.partition)
            if state is None:  # fetched before our assignment callback finished: re-read
                self._rewind({tp: records})
                continue
            if records[0].offset < state.next_fetch:
                records = [r for r in records if r.offset >= state.next_fetch]
                if not records:
                    continue
            offsets = [r.offset for r in records]
            floor = state.committed if state.committed >= 0 else offsets[0]
            runs, priors = state.runs.bumped(offsets, floor)
            staged.append((state, state.epoch, records, runs, priors))
            sends.append(
                producer.send(
                    self._deliveries_topic,
                    runs.encode(tp.partition),
                    key=b"%d" % tp.partition,
                    partition=tp.partition,
                )
            )
        if not staged:
            return []
        try:
            await asyncio.gather(*await asyncio.gather(*sends))
        except CLIENT_ERRORS as exc:
            self._rewind(batch)  # nothing was handed out: fetch these records again
            raise unavailable(f"write to {self._deliveries_topic}", exc) from exc
        out: list[Delivery] = []
        for state, epoch, records, runs, priors in staged:
            if self._parts.get(state.partition) is not state or state.epoch != epoch:
                continue  # revoked while we wrote: the records are refetched by the owner
            state.runs = runs
            state.hand_out([r.offset for r in records])
            for record, prior in zip(records, priors, strict=True):
                headers = _decode_headers(record.headers)
                count = _attempt(headers) + prior
                out.append(KafkaDelivery(record, headers, count, state))
        self._outstanding += len(out)
        return out

    def _rewind(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Seek back to the first record of each batch still assigned to us."""
        assigned = self._consumer.assignment()
        for tp, records in batch.items():
            if tp in assigned and records:
                self._consumer.seek(tp, records[0].offset)

    def _set_paused(self, paused: bool) -> None:
        """Stop fetching for this member while it holds ``max_outstanding`` deliveries.

        The member stays in the group (aiokafka heartbeats in the background), so a slow
        task never costs it its partitions.
        """
        if paused == self._paused or not self._joined:
            return
        assigned = self._consumer.assignment()
        if paused:
            self._consumer.pause(*assigned)
        else:
            self._consumer.resume(*assigned)
        self._paused = paused

    async def _fall_back_session_timeout(self) -> None:
        log.warning(
            "kafka refused session timeout %d ms for group %s (below group.min.session."
            "timeout.ms?); using %d ms, so a dead worker's tasks are reclaimed later",
            self._session_ms,
            self._topic,
            KAFKA_MIN_SESSION_MS,
        )
        await stop_quietly(self._consumer)
        self._session_ms = max(self._session_ms, KAFKA_MIN_SESSION_MS)
        self._joined = False
        self._consumer = await self._new_consumer(self._session_ms)

    # acknowledging -------------------------------------------------------------------

    async def complete(
        self,
        delivery: Delivery,
        publish: Sequence[Outbound] = (),
        remember: Remember | None = None,
    ) -> None:
        """Store the ledger entry and the result, then mark the offset finished.

        The completions of a loop turn are written together (``_kafka_writer``). Both
        records are stored before the offset can be committed, so their order does not
        matter for safety: a crash after only the ledger entry landed redelivers a task the
        ledger answers; after only the result landed, the task runs again and the client
        drops the second result (at-least-once).
        """
        assert isinstance(delivery, KafkaDelivery)
        if remember is None:
            await self._writer.write(delivery.partition, None, publish)
        else:
            expires = time.time_ns() // 1_000_000 + remember.ttl_ms
            entry = (remember.task_id.encode(), remember.result, expires)
            offset = await self._writer.write(delivery.partition, entry, publish)
            assert offset is not None
            self._ledger.remember(remember.task_id, delivery.partition, offset, expires)
        self._finish(delivery)

    def _finish(self, delivery: KafkaDelivery) -> None:
        if delivery.done or self._closed:
            return  # after close() the new owner redelivers it; nothing to count
        delivery.done = True
        self._outstanding -= 1
        state = delivery.state
        if state.finish(delivery.offset) and self._parts.get(state.partition) is state:
            self._dirty.set()

    async def release(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        """Requeue: produce a copy with ``murmur-attempt`` + 1 to the same partition, then
        finish the original. Kafka cannot un-deliver a record in place."""
        copies = []
        for d in deliveries:
            assert isinstance(d, KafkaDelivery)
            if d.done:
                continue
            headers = [(k, v.encode()) for k, v in d.headers.items() if k != wire.ATTEMPT]
            headers.append((wire.ATTEMPT, b"%d" % (d.delivery_count + 1)))
            copies.append((d, headers))
        if copies:
            producer = self._broker.producer
            with translated(f"requeue to {self._topic}"):
                futures = [
                    await producer.send(
                        self._topic, d.body, key=d.key, headers=h, partition=d.partition
                    )
                    for d, h in copies
                ]
                await asyncio.gather(*futures)
            for d, _ in copies:
                self._finish(d)
        self._ledger.release(task_ids, self.consumer_id)

    async def extend(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        """Deliveries need no renewal (the member heartbeats while it lives); claims do."""
        self._ledger.extend(task_ids, self.consumer_id, self.lease_ms)

    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        claims = self._ledger.claim(task_ids, self.consumer_id, self.lease_ms)
        if all(c.state is not ClaimState.DONE for c in claims):
            return claims
        done = {
            task_id: where
            for task_id, c in zip(task_ids, claims, strict=True)
            if c.state is ClaimState.DONE and (where := self._ledger.location(task_id))
        }
        stored = await self._read_results(done)
        for i, (task_id, c) in enumerate(zip(task_ids, claims, strict=True)):
            if c.state is not ClaimState.DONE:
                continue
            result = stored.get(task_id)
            if result is not None:
                claims[i] = Claim(ClaimState.DONE, result=result)
                continue
            # expired meanwhile, or its record is gone from the topic: run it again
            self._ledger.forget(task_id)
            (claims[i],) = self._ledger.claim([task_id], self.consumer_id, self.lease_ms)
        return claims

    async def _read_results(self, where: Mapping[str, tuple[int, int]]) -> dict[str, bytes]:
        """The stored results of finished tasks, read back from their ledger records."""
        if not where:
            return {}
        wanted: dict[TopicPartition, dict[int, set[str]]] = {}
        for task_id, (partition, offset) in where.items():
            tp = TopicPartition(self._ledger_topic, partition)
            wanted.setdefault(tp, {}).setdefault(offset, set()).add(task_id)
        last = {tp: max(offsets) for tp, offsets in wanted.items()}
        found: dict[str, bytes] = {}

        def take(tp: TopicPartition, records: Sequence[Any]) -> bool:
            offsets = wanted[tp]
            for record in records:
                ids = offsets.get(record.offset)
                if not ids:
                    continue
                # an entry of another task id (the offset holds another record) is no answer
                entries = decode_results(record.key, record.value)
                found.update({tid: result for tid, result, _ in entries if tid in ids})
            return bool(records[-1].offset >= last[tp])  # past the last one we need: stop

        starts = {tp: min(offsets) for tp, offsets in wanted.items()}
        async with self._reader_lock:
            with translated(f"read {self._ledger_topic}"):
                await read_to_end(self._reader, starts, take, timeout=_READ_BACK_TIMEOUT_S)
        return found

    # committing ----------------------------------------------------------------------

    async def flush(self) -> None:
        """Commit every contiguous finished offset now (tests, shutdown)."""
        await self._commit()

    async def _commit_loop(self) -> None:
        """Commit at most every ``COMMIT_INTERVAL_S``, one commit in flight at a time.

        Completions meanwhile ride on the next commit: a sequential worker would otherwise
        pay one commit per task. A crash loses at most that interval of acks, and those
        tasks come back to be answered from the ledger.
        """
        while True:
            await self._dirty.wait()
            await asyncio.sleep(COMMIT_INTERVAL_S)
            self._dirty.clear()
            try:
                await self._commit()
            except BrokerUnavailable as exc:
                log.warning("kafka commit for %s failed, retrying: %s", self._topic, exc)
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def _commit(self, only: Collection[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            if not self._joined:
                return
            assigned = self._consumer.assignment()
            offsets: dict[TopicPartition, int] = {}
            for p, state in self._parts.items():
                tp = TopicPartition(self._topic, p)
                if state.needs_commit() and tp in assigned and (only is None or tp in only):
                    offsets[tp] = state.commit_point()
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError):
                return  # rebalancing: retried after reassignment, or the new owner redelivers
            except KafkaError as exc:
                raise BrokerUnavailable(f"kafka commit for {self._topic}: {exc}") from exc
            for tp, offset in offsets.items():
                held = self._parts.get(tp.partition) or self._limbo.get(tp.partition)
                if held is not None:
                    held.committed = max(held.committed, offset)

    # rebalancing ---------------------------------------------------------------------

    def _report(self) -> tuple[list[int], list[int]]:
        """(owned, busy) partitions for the sticky assignor; called at JoinGroup."""
        held = {**self._limbo, **self._parts}
        return list(held), [p for p, s in held.items() if s.outstanding]

    async def _on_revoked(self, revoked: Collection[TopicPartition]) -> None:
        try:
            await self._commit(revoked)
        except BrokerUnavailable as exc:
            log.warning("kafka commit on revocation for %s failed: %s", self._topic, exc)
        for tp in revoked:
            state = self._parts.pop(tp.partition, None)
            if state is not None:
                state.epoch += 1
                self._limbo[tp.partition] = state
        self._paused = False  # aiokafka forgets pauses with the assignment

    async def _on_assigned(self, assigned: Collection[TopicPartition]) -> None:
        fresh: list[int] = []
        for tp in assigned:
            state = self._limbo.pop(tp.partition, None)
            if state is None:
                fresh.append(tp.partition)
                continue
            self._parts[tp.partition] = state  # handed back: carry on where we were
            if state.next_fetch >= 0:
                self._consumer.seek(tp, state.next_fetch)
            if state.needs_commit():
                self._dirty.set()
        self._limbo.clear()  # moved to other members: their deliveries went stale
        if fresh:
            runs = await self._load(fresh)
            for p in fresh:
                self._parts[p] = PartitionState(p, runs.get(p))

    async def _load(self, partitions: list[int]) -> dict[int, DeliveryRuns]:
        """Load the ledger and the delivery counts of newly assigned partitions.

        Only the newest ``ledger_results`` records of each ledger partition: the table keeps
        no more than that, and the topic holds days of results (its retention), which a
        member read in full on every assignment. Compaction does not shorten it (every task
        id is a new key).
        """
        ledger = [TopicPartition(self._ledger_topic, p) for p in partitions]
        deliveries = [TopicPartition(self._deliveries_topic, p) for p in partitions]
        try:
            # the ends from a Fetch: Tansu's ListOffsets undercounts them (kafka.py, quirk 1)
            async with self._reader_lock:
                ends = await high_watermarks(self._reader, ledger)
                keep = self._ledger.max_results
                starts = {tp: max(0, ends.get(tp, 0) - keep) for tp in ledger}
                await read_to_end(self._reader, starts, lambda _tp, recs: self._ledger.load(recs))
                last = await last_records(self._reader, deliveries)
        except (BrokerUnavailable, KafkaError) as exc:
            # Consuming without them is still at-least-once; counts/replays may be missed.
            log.warning("kafka: could not load ledger/deliveries of %s: %s", self._topic, exc)
            return {}
        return {tp.partition: DeliveryRuns.decode(rec.value) for tp, rec in last.items()}
