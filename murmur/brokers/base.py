"""The broker contract: what the worker and client need from any broker (DESIGN §4).

Every adapter (``memory``, ``redis``, ``nats``, ``kafka``) implements these classes with
the same observable semantics; ``tests/contract`` runs one suite against all of them.

Vocabulary:

* a **topic** is a DESIGN §3 name (``murmur.<agent>.tasks`` ...), the same on every broker;
* a :class:`TaskConsumer` is one member of an agent's competing-consumer group. It hands
  out :class:`Delivery` objects that stay *outstanding* (claimed, unacknowledged) until
  :meth:`TaskConsumer.complete` or :meth:`TaskConsumer.release`. Outstanding work of a
  member that stops renewing its lease is reclaimed by another member after
  ``reclaim_min_idle_ms``, with ``delivery_count`` incremented;
* the **ledger** is the per-agent idempotency store (a task id -> its final result), so a
  redelivered or replayed task is answered from the stored result instead of running
  again. Claims in it are leases held by a consumer while the task runs;
* **presence** is one expiring record per live worker (DESIGN §5): the worker rewrites it
  every heartbeat and drops it on a graceful stop, so a killed worker's record simply
  expires and ``murmur status`` lists live workers without replaying heartbeat history.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self


@dataclass(slots=True)
class Message:
    """A message read from a topic outside any group (results, events, heartbeats, DLQ).

    ``id`` is the broker-native position (Redis entry id, JetStream sequence, Kafka
    ``partition:offset``) used to delete or replay it; ``timestamp_ms`` is when the broker
    stored it (0 when unknown).
    """

    body: bytes
    headers: Mapping[str, str]
    id: str = ""
    timestamp_ms: int = 0


class Delivery:
    """One claimed task. Adapters subclass it to carry their own handle (entry id, Msg...).

    ``delivery_count`` is 1 the first time a message is handed out and grows on every
    redelivery (reclaim after a crash, release, requeue).
    """

    __slots__ = ("body", "delivery_count", "headers", "id")

    def __init__(
        self, body: bytes, headers: Mapping[str, str], delivery_count: int, id: str
    ) -> None:
        self.body = body
        self.headers = headers
        self.delivery_count = delivery_count
        self.id = id

    def __repr__(self) -> str:  # never the body: it may be sensitive
        return f"<{type(self).__name__} id={self.id} delivery={self.delivery_count}>"


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to publish. ``key`` routes Kafka partitions (the task id for tasks)."""

    topic: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class Remember:
    """Ledger write that goes with a completion: task ``task_id`` ended with ``result``.

    ``ttl_ms`` bounds how long a replay is answered from the ledger (the task's
    ``expires_at`` or the worker's ``idempotency_ttl``).
    """

    task_id: str
    result: bytes
    ttl_ms: int


class ClaimState(enum.Enum):
    CLAIMED = "claimed"  # this consumer now owns the task: run it
    DONE = "done"  # already finished: ``result`` holds the stored result body
    BUSY = "busy"  # another live consumer is running it right now


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    result: bytes | None = None
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What ``murmur status`` shows per agent.

    ``depth``: published, not yet delivered to any member. ``pending``: delivered, not
    acknowledged. ``dead``: messages in the dead-letter topic. ``consumers``: group members
    the broker knows about (None when it cannot tell).
    """

    agent: str
    depth: int
    pending: int
    dead: int
    consumers: int | None = None


class TaskConsumer(abc.ABC):
    """Membership of one agent's competing-consumer group on one broker connection.

    Created by :meth:`Broker.task_consumer`; the group and topics exist after
    :meth:`start`. All methods are safe to call concurrently from many asyncio tasks;
    adapters batch concurrent calls into as few round trips as the broker allows.
    """

    def __init__(
        self,
        *,
        agent: str,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
    ) -> None:
        self.agent = agent
        self.consumer_id = consumer_id
        self.reclaim_min_idle_ms = reclaim_min_idle_ms
        self.max_outstanding = max_outstanding

    @property
    def lease_ms(self) -> int:
        """How long a claim stays valid without renewal; the worker renews at a third."""
        return self.reclaim_min_idle_ms or 30_000

    @abc.abstractmethod
    async def start(self) -> None:
        """Prepare membership (creating topic, group and ledger idempotently).

        An adapter may join the group only on the first :meth:`fetch` (Kafka does: a
        member that never fetches must not own partitions).
        """

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        """Claim up to ``max_messages`` (new ones, or idle ones reclaimed from dead members).

        Waits at most ``timeout`` seconds for the first message and returns ``[]`` when
        none came; returns early as soon as at least one is available. Never returns more
        than ``max_outstanding`` minus what is already outstanding on this consumer.
        """

    @abc.abstractmethod
    async def complete(
        self,
        delivery: Delivery,
        publish: Sequence[Outbound] = (),
        remember: Remember | None = None,
    ) -> None:
        """Record ``remember`` in the ledger, publish ``publish`` durably, then acknowledge.

        The order is the at-least-once contract: after a crash at any point the message is
        redelivered, and the ledger (written first) answers it without running it again.
        Dead-lettering is a completion that publishes to the dead topic. The
        acknowledgement itself may be applied asynchronously (Kafka commits the contiguous
        prefix in batches); :meth:`close` makes it durable.
        """

    @abc.abstractmethod
    async def extend(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        """Renew the lease on outstanding ``deliveries`` and ledger claims on ``task_ids``."""

    @abc.abstractmethod
    async def release(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        """Hand unstarted ``deliveries`` back now (a live member gets them at once) and drop
        this consumer's ledger claims on ``task_ids``. Counts as a delivery attempt."""

    @abc.abstractmethod
    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        """Claim each task id in the ledger for this consumer, one :class:`Claim` per id.

        A claim held by this same consumer id is re-entrant (a restart with a stable
        ``consumer_id`` picks up its own work); a claim whose lease ran out is taken over.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop fetching and leave the group. Outstanding deliveries stay unacknowledged.

        Local bookkeeping (``outstanding``) is updated even when a broker call fails, so
        a worker can always forget what it handed back.
        """

    @property
    @abc.abstractmethod
    def outstanding(self) -> int:
        """Deliveries handed out by this consumer and not yet completed or released."""


class Subscription(abc.ABC):
    """A private reader of one topic from the moment it was opened (results, events).

    Not a group member: every subscription sees every message published to the topic
    after :meth:`Broker.subscribe` returned.
    """

    @abc.abstractmethod
    async def get(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` seconds for messages; ``[]`` if none arrived."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Broker(abc.ABC):
    """A connection to one broker. Create with :func:`murmur.brokers.connect_broker`."""

    scheme: str = ""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def display_url(self) -> str:
        """The URL with any password removed, safe for logs and banners."""
        from murmur.brokers.urls import redact

        return redact(self.url)

    # lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect (idempotent). Raises :class:`murmur.errors.BrokerUnavailable`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every consumer, subscription and connection this broker opened."""

    @abc.abstractmethod
    async def ping(self, timeout: float = 2.0) -> bool:
        """True when the broker answers a round trip within ``timeout``."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # publishing ----------------------------------------------------------------------

    @abc.abstractmethod
    async def publish(self, messages: Sequence[Outbound]) -> None:
        """Publish durably, in order; returns once the broker has stored all of them."""

    async def publish_one(
        self,
        topic: str,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        await self.publish((Outbound(topic, body, headers or {}, key),))

    @abc.abstractmethod
    async def ensure_task_topic(self, agent: str) -> None:
        """Make sure tasks published to ``agent`` are kept even if no worker ever ran.

        Idempotent; the client calls it once per agent before its first submit.
        """

    # consuming -----------------------------------------------------------------------

    @abc.abstractmethod
    def task_consumer(
        self,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> TaskConsumer:
        """A member of ``agent``'s group; call :meth:`TaskConsumer.start` before fetching."""

    @abc.abstractmethod
    async def subscribe(self, topic: str) -> Subscription:
        """A private reader of ``topic``; sees everything published after this returns."""

    # inspection and repair -------------------------------------------------------------

    @abc.abstractmethod
    async def read(
        self, topic: str, *, since_ms: int | None = None, limit: int = 1000
    ) -> list[Message]:
        """Messages stored on ``topic`` (oldest first), optionally only those stored at or
        after ``since_ms``; at most ``limit``. Used for heartbeats and dead letters."""

    @abc.abstractmethod
    async def delete(self, topic: str, ids: Sequence[str]) -> int:
        """Remove stored messages by id (dead-letter replay and purge); returns how many.

        Afterwards :meth:`read` no longer returns them (Kafka hides them; the records stay
        until the topic's retention)."""

    @abc.abstractmethod
    async def purge(self, topic: str) -> int:
        """Remove every stored message of ``topic``; returns how many were removed."""

    @abc.abstractmethod
    async def queue_stats(self, agent: str) -> QueueStats: ...

    # presence --------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_presence(self, worker_id: str, record: bytes, ttl_ms: int) -> None:
        """Store ``record`` as ``worker_id``'s presence, replacing the previous one.

        It is listed by :meth:`list_presence` for ``ttl_ms`` after this call and then
        disappears on its own (a killed worker needs nobody to clean up after it). The
        record is opaque bytes to the broker.
        """

    @abc.abstractmethod
    async def drop_presence(self, worker_id: str) -> None:
        """Remove ``worker_id``'s presence now (a graceful stop). Idempotent."""

    @abc.abstractmethod
    async def list_presence(self) -> list[bytes]:
        """The records of every worker whose presence has not expired or been dropped,
        newest record per worker, in no particular order."""

    def describe(self) -> dict[str, Any]:
        """Facts for banners and ``status`` (never secrets)."""
        return {"broker": self.scheme, "url": self.display_url}
