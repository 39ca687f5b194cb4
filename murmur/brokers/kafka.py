"""``kafka://h1:9092,h2:9092``: the broker contract on Kafka (DESIGN §4, Kafka column).

The connection is FastStream's ``KafkaBroker``; after ``connect()`` we drive its aiokafka
producer, admin client and consumer factory directly. FastStream's subscriber commits per
message or per batch; murmur must commit only the highest *contiguous* finished offset
(tasks finish out of order), pause partitions for backpressure and count deliveries, none
of which its subscriber API can express.

How the contract maps onto Kafka:

* **Group**: one consumer group per agent named after its task topic; one
  ``AIOKafkaConsumer`` per :class:`~murmur.brokers.base.TaskConsumer`, joined on its first
  ``fetch()``. Kafka detects a dead member by missed heartbeats: its partitions move after
  the session timeout, ``min(reclaim_min_idle_ms, 10 s)`` unless ``session_timeout_ms`` is
  given; a clean ``close()`` leaves at once. A broker that refuses a short session
  (Kafka's ``group.min.session.timeout.ms``, 6 s by default) gets 6 s and a warning.
* **Lease**: a live member heartbeats from the background and never hits
  ``max.poll.interval``, and the group uses a sticky assignor that keeps partitions with
  running tasks on their owner (``_kafka_assignor``): a slow task is never run twice.
* **Prefetch**: ``fetch(n)`` asks aiokafka for at most ``max_outstanding - outstanding``
  records; at the limit the member's partitions are paused.
* **Ack**: ``complete()`` stores the ledger entry and the result (the completions of a
  loop turn together, ``_kafka_writer``), then marks the offset finished; a background
  committer commits per partition the highest contiguous finished offset + 1 (one commit
  in flight, later completions ride on the next one), and again on revocation and close.
  The commit is therefore asynchronous: after a crash a finished task can come back, and
  the ledger answers it.
* **Delivery count**: ``murmur.<agent>.deliveries`` (compacted, one record per task
  partition) holds how often each uncommitted offset was handed out; it is written before
  a batch is handed out and read by the next owner (``_kafka_offsets``). ``release()``
  re-produces the task with ``murmur-attempt: n+1`` and finishes the original.
* **Ledger**: ``murmur.<agent>.ledger`` (``compact,delete``), see ``_kafka_ledger``. It
  relies on every copy of a task id landing in one partition: publishers in other
  languages must key tasks by ``task_id`` (DESIGN §3) for replays to be deduplicated.
* **Topics** are created when missing: task topics with ``partitions`` partitions
  (``MURMUR_KAFKA_PARTITIONS``, default 12), ledger/deliveries with the task topic's count,
  everything else (results, events, dead letters, heartbeats) with one partition so reads
  keep publication order; heartbeats are kept one day.
* **Presence**: the compacted topic ``murmur.presence``, see ``_kafka_presence``.
* **read/delete/purge**: Kafka cannot delete single records. The committed offsets of the
  group ``<topic>.consumed`` mark the removed head of a topic; ids deleted out of order are
  kept in the compacted topic ``<topic>.removed`` until the head passes them. ``read()``
  hides both, ``queue_stats().dead`` counts what is left, ``purge()`` moves the head to
  the end. The records themselves stay until the topic's retention removes them.

Tansu (the Kafka-compatible broker the tests run) differs from Kafka in ways this module
designs around without relying on them:

1. ListOffsets "latest" returns the last *batch's* base offset + 1, not the high
   watermark; high watermarks are taken from Fetch responses (``_kafka_io.read_to_end``).
2. Offset-commit metadata is dropped, so nothing is stored in it.
3. ``AIOKafkaAdminClient.list_consumer_group_offsets`` breaks the connection; committed
   offsets are read with ``consumer.committed()`` under the group id instead.
4. ``InitProducerId`` fails, so the idempotent producer is off by default
   (``enable_idempotence=True`` for real Kafka).
5. ``offsets_for_times`` answers offset 0 for a time after the last record (Kafka: none),
   so ``read(since_ms=...)`` filters by record timestamp as well.
6. Every JoinGroup round takes about half the session timeout (rounded up to a second),
   one reason the session timeout is capped at 10 s by default.
7. Generations start at 0, and aiokafka sends LeaveGroup only for generation > 0;
   ``close()`` makes sure a member leaves (``_kafka_consumer``).
8. A Fetch waits the full ``fetch.max.wait.ms`` even when data arrives meanwhile, so the
   default wait is 100 ms rather than aiokafka's 500 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from aiokafka.admin import NewPartitions, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from aiokafka.structs import TopicPartition
from faststream.kafka import KafkaBroker as FastStreamKafkaBroker

from murmur.brokers import _kafka_presence
from murmur.brokers._kafka_consumer import KafkaDelivery, KafkaTaskConsumer
from murmur.brokers._kafka_io import (
    CLIENT_ERRORS,
    consumed_group,
    deliveries_topic,
    high_watermarks,
    last_records,
    ledger_topic,
    quiet_client_logs,
    read_to_end,
    removed_topic,
    stop_quietly,
    translated,
    unavailable,
)
from murmur.brokers._kafka_ledger import DEFAULT_MAX_RESULTS, LedgerTable
from murmur.brokers._kafka_offsets import DeliveryRuns
from murmur.brokers._kafka_presence import PresenceView
from murmur.brokers.base import Broker, Message, Outbound, QueueStats, Subscription
from murmur.brokers.urls import kafka_bootstrap
from murmur.errors import BrokerUnavailable, ConfigurationError
from murmur.messages import topics

__all__ = ["KafkaBroker", "KafkaDelivery", "KafkaSubscription", "KafkaTaskConsumer"]

ENV_PARTITIONS = "MURMUR_KAFKA_PARTITIONS"
ENV_LEDGER_RESULTS = "MURMUR_KAFKA_LEDGER_RESULTS"
DEFAULT_PARTITIONS = 12
HEARTBEAT_RETENTION_MS = 86_400_000
LEDGER_RETENTION_MS = 7 * 86_400_000
_COMPACT = {"cleanup.policy": "compact"}
_TOPIC_EXISTS = TopicAlreadyExistsError.errno


def _int_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None


def _wire_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(k, v.encode()) for k, v in headers.items()]


def _message(record: Any) -> Message:
    headers = {k: v.decode("utf-8", "replace") if v else "" for k, v in record.headers}
    return Message(
        record.value or b"", headers, f"{record.partition}:{record.offset}", record.timestamp
    )


def _parse_id(message_id: str) -> tuple[int, int] | None:
    partition, sep, offset = message_id.partition(":")
    if not sep:
        return None
    try:
        return int(partition), int(offset)
    except ValueError:
        return None


class KafkaSubscription(Subscription):
    """A group-less consumer on every partition, started at the high watermark."""

    def __init__(self, broker: KafkaBroker, consumer: Any, topic: str) -> None:
        self._broker = broker
        self._consumer = consumer
        self._where = f"read {topic}"
        self._closed = False

    async def get(self, timeout: float) -> list[Message]:
        if self._closed:
            return []
        try:
            batch = await self._consumer.getmany(timeout_ms=max(0, int(timeout * 1000)))
        except CLIENT_ERRORS as exc:
            raise unavailable(self._where, exc) from exc
        out = [_message(r) for records in batch.values() for r in records]
        if len(batch) > 1:
            out.sort(key=lambda m: m.timestamp_ms)
        return out

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await stop_quietly(self._consumer)
            self._broker.unregister(self)


class KafkaBroker(Broker):
    """Kafka (or a Kafka-compatible server) through FastStream/aiokafka; see the module doc.

    Options: ``partitions`` for new task topics (default ``MURMUR_KAFKA_PARTITIONS`` or
    12), ``replication_factor`` (1), ``enable_idempotence`` (False: Tansu cannot),
    ``linger_ms`` (0: the producer sends what a loop turn queued right after that turn),
    ``connect_timeout`` seconds (10), ``request_timeout_ms`` (15000),
    ``session_timeout_ms`` of task consumers (default ``min(reclaim_min_idle_ms, 10 s)``),
    ``fetch_max_wait_ms`` (100: the longest a fetch waits on the server; Tansu always waits
    that long, so it bounds task and result latency there), ``ledger_results`` (default
    ``MURMUR_KAFKA_LEDGER_RESULTS`` or 10,000: finished results per agent a worker keeps to
    answer duplicates, see ``_kafka_ledger``); anything else (``security=``,
    ``client_id=``, SASL/SSL settings) goes to ``faststream.kafka.KafkaBroker`` and so to
    every producer, admin client and consumer.
    """

    scheme = "kafka"

    def __init__(
        self,
        url: str = "kafka://localhost:9092",
        *,
        partitions: int | None = None,
        replication_factor: int = 1,
        enable_idempotence: bool = False,
        linger_ms: int = 0,
        connect_timeout: float = 10.0,
        request_timeout_ms: int = 15_000,
        session_timeout_ms: int | None = None,
        fetch_max_wait_ms: int = 100,
        ledger_results: int | None = None,
        **client_options: Any,
    ) -> None:
        super().__init__(url)
        self.bootstrap = kafka_bootstrap(url)
        self.partitions = (
            _int_from_env(ENV_PARTITIONS, DEFAULT_PARTITIONS) if partitions is None else partitions
        )
        if self.partitions < 1:
            raise ConfigurationError(f"kafka partitions must be >= 1, got {self.partitions}")
        self.ledger_results = (
            _int_from_env(ENV_LEDGER_RESULTS, DEFAULT_MAX_RESULTS)
            if ledger_results is None
            else ledger_results
        )
        if self.ledger_results < 1:
            raise ConfigurationError(f"ledger_results must be >= 1, got {self.ledger_results}")
        if replication_factor < 1:
            raise ConfigurationError(f"replication_factor must be >= 1, got {replication_factor}")
        self.replication_factor = replication_factor
        self.connect_timeout = connect_timeout
        if session_timeout_ms is not None and session_timeout_ms < 1:
            raise ConfigurationError(f"session_timeout_ms must be >= 1, got {session_timeout_ms}")
        self.session_timeout_ms = session_timeout_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._client_options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": enable_idempotence,
            "linger_ms": linger_ms,
            "request_timeout_ms": request_timeout_ms,
            "client_id": "murmur",
            "logger": None,
            **client_options,
        }
        self._fs: FastStreamKafkaBroker | None = None
        self._producer: Any = None
        self._known: dict[str, int] = {}  # topic -> partition count
        self._topic_lock = asyncio.Lock()
        self._reader: Any = None
        self._reader_lock = asyncio.Lock()
        self._groups: dict[str, Any] = {}
        self._ledgers: dict[str, LedgerTable] = {}
        self._owned: set[KafkaTaskConsumer | KafkaSubscription] = set()
        self.publish_where = f"publish ({self.display_url})"
        self._presence = PresenceView()
        quiet_client_logs()

    # lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._fs is not None:
            return
        fs = FastStreamKafkaBroker(self.bootstrap, **self._client_options)
        try:
            await asyncio.wait_for(fs.connect(), self.connect_timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await stop_quietly(fs)
            detail = str(exc) or type(exc).__name__
            raise BrokerUnavailable(
                f"cannot connect to Kafka at {self.display_url}: {detail}"
            ) from exc
        self._fs = fs
        # FastStream keeps the AIOKafkaProducer behind its publishing wrapper.
        self._producer = cast(Any, fs.config.producer)._producer.producer

    async def close(self) -> None:
        for owned in list(self._owned):
            await owned.close()
        for client in [self._reader, *self._groups.values()]:
            await stop_quietly(client)
        self._reader = None
        self._groups.clear()
        self._known.clear()  # a reconnect re-checks topics (a memory-only server forgets them)
        if self._fs is not None:
            fs, self._fs, self._producer = self._fs, None, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(fs.stop(), 10.0)

    async def ping(self, timeout: float = 2.0) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
        except (KafkaError, OSError, TimeoutError):
            return False
        return True

    # plumbing used by the task consumer ----------------------------------------------

    @property
    def producer(self) -> Any:
        if self._producer is None:
            raise BrokerUnavailable(f"not connected to {self.display_url}; call connect() first")
        return self._producer

    @property
    def builder(self) -> Callable[..., Any]:
        """aiokafka consumer factory carrying the connection (and security) settings."""
        if self._fs is None:
            raise BrokerUnavailable(f"not connected to {self.display_url}; call connect() first")
        return cast(Callable[..., Any], self._fs.config.builder)

    @property
    def _admin(self) -> Any:
        if self._fs is None:
            raise BrokerUnavailable(f"not connected to {self.display_url}; call connect() first")
        return self._fs.config.admin_client

    def register(self, owned: KafkaTaskConsumer | KafkaSubscription) -> None:
        self._owned.add(owned)

    def unregister(self, owned: KafkaTaskConsumer | KafkaSubscription) -> None:
        self._owned.discard(owned)

    def ledger_table(self, agent: str) -> LedgerTable:
        """The in-process ledger of ``agent``, shared by every local consumer of it."""
        table = self._ledgers.get(agent)
        if table is None:
            table = self._ledgers[agent] = LedgerTable(self.ledger_results)
        return table

    async def new_reader(self) -> Any:
        """A started group-less consumer for :func:`read_to_end` (short fetch waits)."""
        reader = self.builder(
            enable_auto_commit=False, auto_offset_reset="earliest", fetch_max_wait_ms=50
        )
        with translated(f"reader ({self.display_url})"):
            await reader.start()
        return reader

    async def _shared_reader(self) -> Any:
        if self._reader is None:
            self._reader = await self.new_reader()
        return self._reader

    async def _group_client(self, group: str) -> Any:
        """A consumer under ``group`` that never joins it: reads and commits its offsets."""
        client = self._groups.get(group)
        if client is None:
            client = self.builder(group_id=group, enable_auto_commit=False)
            with translated(f"group client ({self.display_url})"):
                await client.start()
            self._groups[group] = client
        return client

    # topics --------------------------------------------------------------------------

    def _spec(self, topic: str) -> tuple[int, dict[str, str]]:
        if topics.agent_of_topic(topic) is not None and topic.endswith(".tasks"):
            return self.partitions, {}
        if topic == topics.HEARTBEATS:
            return 1, {"retention.ms": str(HEARTBEAT_RETENTION_MS)}
        if topic.endswith(".removed"):
            return 1, dict(_COMPACT)
        if topic == topics.PRESENCE:
            return 1, dict(_kafka_presence.CONFIGS)
        return 1, {}

    async def _ensure_topic(
        self, topic: str, partitions: int | None = None, configs: dict[str, str] | None = None
    ) -> int:
        """Create ``topic`` if missing (idempotent); returns its partition count."""
        known = self._known.get(topic)
        if known is not None:
            return known
        if partitions is None or configs is None:
            partitions, configs = self._spec(topic)
        async with self._topic_lock:
            known = self._known.get(topic)
            if known is not None:
                return known
            with translated(f"create topic {topic}"):
                new = NewTopic(topic, partitions, self.replication_factor, topic_configs=configs)
                response = await self._admin.create_topics([new])
                for _name, code, *rest in response.topic_errors:
                    if code not in (0, _TOPIC_EXISTS):
                        raise for_code(code)(f"{topic}: {rest[0] if rest else ''}")
                count = len(await self.producer.partitions_for(topic))
            self._known[topic] = count
            return count

    async def _partitions_if_exists(self, topic: str) -> int:
        """Partition count of ``topic``, 0 when it does not exist (never creates it)."""
        known = self._known.get(topic)
        if known is not None:
            return known
        with translated(f"metadata ({self.display_url})"):
            cluster = await self.producer.client.fetch_all_metadata()
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            return 0
        self._known[topic] = len(parts)
        return len(parts)

    async def ensure_task_topic(self, agent: str) -> None:
        await self.ensure_task_topic_partitions(agent)

    async def ensure_task_topic_partitions(self, agent: str) -> int:
        return await self._ensure_topic(topics.task_topic(topics.validate_agent_name(agent)))

    async def ensure_state_topics(self, agent: str, partitions: int) -> None:
        """Ledger and deliveries topics with as many partitions as the task topic."""
        ledger_cfg = {"cleanup.policy": "compact,delete", "retention.ms": str(LEDGER_RETENTION_MS)}
        for topic, cfg in ((ledger_topic(agent), ledger_cfg), (deliveries_topic(agent), _COMPACT)):
            have = await self._ensure_topic(topic, partitions, cfg)
            if have < partitions:
                await self._grow(topic, partitions)

    async def _grow(self, topic: str, partitions: int) -> None:
        try:
            with translated(f"add partitions to {topic}"):
                await self._admin.create_partitions({topic: NewPartitions(partitions)})
        except BrokerUnavailable as exc:
            raise ConfigurationError(
                f"{topic} has fewer partitions than its task topic ({partitions}) and could not"
                f" be grown ({exc}); add partitions to it with kafka-topics --alter"
            ) from exc
        self._known[topic] = partitions

    # publishing ----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outbound]) -> None:
        if not messages:
            return
        try:
            if len(messages) == 1:  # one event or message: no gather
                (sent,) = await self.enqueue(messages)
                await sent
                return
            await asyncio.gather(*await self.enqueue(messages))
        except CLIENT_ERRORS as exc:
            raise unavailable(self.publish_where, exc) from exc

    async def enqueue(self, messages: Sequence[Outbound]) -> list[asyncio.Future[Any]]:
        """Hand ``messages`` to the producer; each future resolves when Kafka has it.

        Callers await the futures together with their other writes, so that a completion's
        records go out in one produce request instead of one round trip each.
        """
        known = self._known
        for m in messages:
            if m.topic not in known:
                await self._ensure_topic(m.topic)
        producer = self.producer
        return [
            await producer.send(m.topic, m.body, key=m.key, headers=_wire_headers(m.headers))
            for m in messages
        ]

    # consuming -----------------------------------------------------------------------

    def task_consumer(
        self,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> KafkaTaskConsumer:
        return KafkaTaskConsumer(
            self,
            topics.validate_agent_name(agent),
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
        )

    async def subscribe(self, topic: str) -> KafkaSubscription:
        partitions = await self._ensure_topic(topic)
        consumer = self.builder(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
        )
        with translated(f"subscribe to {topic}"):
            await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            with translated(f"subscribe to {topic}"):
                hws = await high_watermarks(consumer, tps)
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, hws[tp])
        except BaseException:
            await stop_quietly(consumer)
            raise
        sub = KafkaSubscription(self, consumer, topic)
        self.register(sub)
        return sub

    # inspection and repair -----------------------------------------------------------

    async def _heads(self, topic: str, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """First offset not yet removed, per partition (the ``.consumed`` group's commit)."""
        client = await self._group_client(consumed_group(topic))
        with translated(f"committed offsets of {consumed_group(topic)}"):
            found = await asyncio.gather(*(client.committed(tp) for tp in tps))
        return {tp: offset or 0 for tp, offset in zip(tps, found, strict=True)}

    async def _removed(self, topic: str) -> set[tuple[int, int]]:
        """Ids deleted out of order, still above the head."""
        name = removed_topic(topic)
        if not await self._partitions_if_exists(name):
            return set()
        removed: set[tuple[int, int]] = set()

        def apply(_tp: TopicPartition, records: Sequence[Any]) -> None:
            for r in records:
                pos = _parse_id(r.key.decode()) if r.key else None
                if pos is not None:
                    (removed.add if r.value is not None else removed.discard)(pos)

        reader = await self._shared_reader()
        with translated(f"read {name}"):
            await read_to_end(reader, {TopicPartition(name, 0): 0}, apply)
        return removed

    async def _layout(
        self, topic: str
    ) -> tuple[
        list[TopicPartition],
        dict[TopicPartition, int],
        dict[TopicPartition, int],
        set[tuple[int, int]],
    ]:
        """Partitions, heads, high watermarks and removed ids of an existing topic."""
        n = await self._partitions_if_exists(topic)
        tps = [TopicPartition(topic, p) for p in range(n)]
        if not tps:
            return [], {}, {}, set()
        heads = await self._heads(topic, tps)
        async with self._reader_lock:
            reader = await self._shared_reader()
            with translated(f"read {topic}"):
                hws = await high_watermarks(reader, tps)
            removed = await self._removed(topic)
        return tps, heads, hws, removed

    async def read(
        self, topic: str, *, since_ms: int | None = None, limit: int = 1000
    ) -> list[Message]:
        """Stored messages not deleted, oldest first (by timestamp across partitions)."""
        tps, heads, _hws, removed = await self._layout(topic)
        if not tps or limit <= 0:
            return []
        starts = dict(heads)
        async with self._reader_lock:
            reader = await self._shared_reader()
            if since_ms is not None:
                with translated(f"offsets_for_times on {topic}"):
                    found = await reader.offsets_for_times(dict.fromkeys(tps, since_ms))
                starts = {
                    tp: max(heads[tp], hit.offset)
                    for tp, hit in found.items()
                    if hit is not None and tp in heads
                }
            out: list[Message] = []
            taken = dict.fromkeys(tps, 0)
            floor = since_ms if since_ms is not None else -(2**63)

            def collect(tp: TopicPartition, records: Sequence[Any]) -> bool:
                for r in records:
                    if taken[tp] >= limit:
                        return True
                    if r.timestamp >= floor and (r.partition, r.offset) not in removed:
                        out.append(_message(r))
                        taken[tp] += 1
                return taken[tp] >= limit

            with translated(f"read {topic}"):
                await read_to_end(reader, starts, collect)
        if len(tps) > 1:
            out.sort(key=lambda m: m.timestamp_ms)
        return out[:limit]

    async def delete(self, topic: str, ids: Sequence[str]) -> int:
        """Hide the given messages from :meth:`read`: ids at the head move the ``.consumed``
        group's offset, others are kept in ``<topic>.removed``. Returns how many existed."""
        tps, heads, hws, removed = await self._layout(topic)
        if not tps or not ids:
            return 0
        by_p = {tp.partition: tp for tp in tps}
        valid: set[tuple[int, int]] = set()
        for pos in map(_parse_id, ids):
            if pos is not None and pos[0] in by_p and pos not in removed:
                tp = by_p[pos[0]]
                if heads[tp] <= pos[1] < hws[tp]:
                    valid.add(pos)
        if not valid:
            return 0
        gone = removed | valid
        new_heads: dict[TopicPartition, int] = {}
        for tp in tps:
            head = heads[tp]
            while head < hws[tp] and (tp.partition, head) in gone:
                head += 1
            new_heads[tp] = head
        keep = [pos for pos in valid if pos[1] >= new_heads[by_p[pos[0]]]]
        drop = [pos for pos in removed if pos[1] < new_heads[by_p[pos[0]]]]
        await self._mark_removed(topic, keep, b"1")  # before the head moves: crash-safe
        await self._move_heads(topic, {tp: h for tp, h in new_heads.items() if h > heads[tp]})
        await self._mark_removed(topic, drop, None)
        return len(valid)

    async def purge(self, topic: str) -> int:
        """Hide every stored message; returns how many were visible."""
        tps, heads, hws, removed = await self._layout(topic)
        if not tps:
            return 0
        hidden = _hidden(removed, tps, heads, hws)
        count = sum(max(0, hws[tp] - heads[tp]) for tp in tps) - hidden
        await self._move_heads(topic, {tp: hws[tp] for tp in tps if hws[tp] > heads[tp]})
        await self._mark_removed(topic, list(removed), None)
        return count

    async def _move_heads(self, topic: str, heads: Mapping[TopicPartition, int]) -> None:
        if not heads:
            return
        client = await self._group_client(consumed_group(topic))
        with translated(f"commit {consumed_group(topic)}"):
            client.assign(list(heads))
            client.pause(*heads)  # it only commits; never fetch
            await client.commit(dict(heads))

    async def _mark_removed(
        self, topic: str, positions: Sequence[tuple[int, int]], value: bytes | None
    ) -> None:
        if not positions:
            return
        name = removed_topic(topic)
        await self._ensure_topic(name)
        producer = self.producer
        with translated(f"write {name}"):
            futures = [
                await producer.send(name, value, key=f"{p}:{o}".encode(), partition=0)
                for p, o in positions
            ]
            await asyncio.gather(*futures)

    async def queue_stats(self, agent: str) -> QueueStats:
        task = topics.task_topic(agent)
        depth = pending = 0
        n = await self._partitions_if_exists(task)
        if n:
            tps = [TopicPartition(task, p) for p in range(n)]
            client = await self._group_client(task)
            with translated(f"committed offsets of {task}"):
                committed = await asyncio.gather(*(client.committed(tp) for tp in tps))
            async with self._reader_lock:
                reader = await self._shared_reader()
                with translated(f"read {task}"):
                    hws = await high_watermarks(reader, tps)
                    runs = await self._delivery_runs(reader, agent, n)
            for tp, done in zip(tps, committed, strict=True):
                start, hw = done or 0, hws[tp]
                handed, delivered_to = runs.get(tp.partition, DeliveryRuns()).pending(start, hw)
                pending += handed
                depth += max(0, hw - delivered_to)
        dead = await self._visible(topics.dead_topic(agent))
        return QueueStats(agent, depth, pending, dead, await self._group_size(task))

    async def _delivery_runs(self, reader: Any, agent: str, n: int) -> dict[int, DeliveryRuns]:
        name = deliveries_topic(agent)
        if not await self._partitions_if_exists(name):
            return {}
        last = await last_records(reader, [TopicPartition(name, p) for p in range(n)])
        return {tp.partition: DeliveryRuns.decode(r.value) for tp, r in last.items()}

    async def _visible(self, topic: str) -> int:
        tps, heads, hws, removed = await self._layout(topic)
        return sum(max(0, hws[tp] - heads[tp]) for tp in tps) - _hidden(removed, tps, heads, hws)

    async def _group_size(self, group: str) -> int | None:
        """Members of the group, or None when the broker will not say."""
        try:
            responses = await asyncio.wait_for(self._admin.describe_consumer_groups([group]), 5.0)
        except Exception:
            return None
        for response in responses:
            for entry in response.groups:
                # (error_code, group, state, protocol_type, protocol, members, ...)
                if entry[1] == group:
                    return len(entry[5])
        return None

    # presence ------------------------------------------------------------------------

    async def put_presence(self, worker_id: str, record: bytes, ttl_ms: int) -> None:
        expires = str(_kafka_presence.wall_ms() + max(1, int(ttl_ms))).encode()
        await self._write_presence(worker_id, record, [(_kafka_presence.EXPIRES_HEADER, expires)])

    async def drop_presence(self, worker_id: str) -> None:
        await self._write_presence(worker_id, None, [])  # a tombstone

    async def _write_presence(
        self, worker_id: str, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._ensure_topic(topics.PRESENCE)
        with translated(f"write {topics.PRESENCE}"):
            sent = await self.producer.send(
                topics.PRESENCE, value, key=worker_id.encode(), headers=headers
            )
            await sent

    async def list_presence(self) -> list[bytes]:
        n = await self._partitions_if_exists(topics.PRESENCE)
        if not n:
            return []
        tps = [TopicPartition(topics.PRESENCE, p) for p in range(n)]
        view = self._presence
        async with self._reader_lock:
            reader = await self._shared_reader()
            with translated(f"read {topics.PRESENCE}"):
                hws = await read_to_end(reader, view.starts(tps), view.apply)
                if any(hws[tp] < view.positions.get(tp, 0) for tp in tps):
                    view.reset()  # the topic was recreated empty: start over
                    await read_to_end(reader, view.starts(tps), view.apply)
        return view.live(_kafka_presence.wall_ms())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "partitions": self.partitions}


def _hidden(
    removed: set[tuple[int, int]],
    tps: Sequence[TopicPartition],
    heads: Mapping[TopicPartition, int],
    hws: Mapping[TopicPartition, int],
) -> int:
    """How many removed ids lie between the head and the end (still stored, not visible)."""
    return sum(1 for p, o in removed if p < len(tps) and heads[tps[p]] <= o < hws[tps[p]])
