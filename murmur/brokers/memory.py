"""``memory://NAME``: the broker contract in process, with Redis Streams' semantics.

Every :class:`MemoryBroker` connected to the same ``memory://NAME`` in one process
shares one hub, so a worker and a client in the same program (tests, the single-process
demo) talk through it exactly as they would through a real broker: consumer groups,
pending entries with delivery counts, reclaim of idle work, leases, a ledger with
claims. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from murmur.brokers.base import (
    Broker,
    Claim,
    ClaimState,
    Delivery,
    Message,
    Outbound,
    QueueStats,
    Remember,
    Subscription,
    TaskConsumer,
)
from murmur.errors import BrokerUnavailable
from murmur.messages import topics

# Streams other than task streams keep at most this many entries (results, events, ...).
_CAP = 100_000


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


@dataclass(slots=True)
class _Entry:
    seq: int
    body: bytes
    headers: Mapping[str, str]
    timestamp_ms: int


@dataclass(slots=True)
class _Pending:
    consumer: str
    count: int
    last_ms: int


@dataclass(slots=True)
class _Group:
    last_delivered: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)


class _Stream:
    __slots__ = ("changed", "entries", "groups", "next_seq")

    def __init__(self) -> None:
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.groups: dict[str, _Group] = {}
        self.next_seq = 1
        self.changed = asyncio.Event()

    def append(self, body: bytes, headers: Mapping[str, str]) -> None:
        seq = self.next_seq
        self.next_seq += 1
        self.entries[seq] = _Entry(seq, body, dict(headers), int(time.time() * 1000))
        if not self.groups and len(self.entries) > _CAP:
            self.entries.popitem(last=False)
        self.notify()

    def notify(self) -> None:
        # Broadcast: set() wakes every current waiter (their futures resolve), clear()
        # makes later waiters wait for the next change. No Event per message.
        self.changed.set()
        self.changed.clear()

    def after(self, seq: int) -> list[_Entry]:
        """Entries newer than ``seq``, oldest first; walks only those (the stream keeps up
        to ``_CAP`` entries, and a subscriber asks after every message)."""
        newer = []
        for entry in reversed(self.entries.values()):
            if entry.seq <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def trim_acked(self) -> None:
        """Drop entries every group has delivered and acknowledged (never pending ones)."""
        if not self.groups:
            return
        floor = min(min(g.pending, default=g.last_delivered + 1) for g in self.groups.values())
        while self.entries:
            seq = next(iter(self.entries))
            if seq >= floor:
                break
            del self.entries[seq]


@dataclass(slots=True)
class _LedgerEntry:
    done: bool
    owner: str
    expires_ms: int
    result: bytes | None = None


class _Hub:
    """Shared state of one ``memory://NAME``."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream] = {}
        self.ledger: dict[tuple[str, str], _LedgerEntry] = {}
        self.presence: dict[str, tuple[bytes, int]] = {}  # worker id -> (record, expires)

    def stream(self, topic: str) -> _Stream:
        s = self.streams.get(topic)
        if s is None:
            s = self.streams[topic] = _Stream()
        return s


_hubs: dict[str, _Hub] = {}


def _hub(url: str) -> _Hub:
    name = url.split("://", 1)[1].strip("/") or "default"
    hub = _hubs.get(name)
    if hub is None:
        hub = _hubs[name] = _Hub()
    return hub


class MemoryDelivery(Delivery):
    __slots__ = ("seq",)

    def __init__(self, entry: _Entry, count: int) -> None:
        super().__init__(entry.body, entry.headers, count, str(entry.seq))
        self.seq = entry.seq


class MemoryTaskConsumer(TaskConsumer):
    def __init__(self, broker: MemoryBroker, agent: str, **kwargs: Any) -> None:
        super().__init__(agent=agent, **kwargs)
        self._broker = broker
        self._topic = topics.task_topic(agent)
        self._group_name = topics.group_name(agent)
        self._mine: set[int] = set()
        self._closed = False
        self._recovered = False

    @property
    def _stream(self) -> _Stream:
        return self._broker.hub.stream(self._topic)

    @property
    def _group(self) -> _Group:
        return self._stream.groups.setdefault(self._group_name, _Group())

    @property
    def outstanding(self) -> int:
        return len(self._mine)

    async def start(self) -> None:
        self._broker.check()
        self._group.consumers.add(self.consumer_id)
        self._broker.consumers.add(self)

    def _take(self, seq: int, pending: _Pending | None, now: int) -> MemoryDelivery | None:
        entry = self._stream.entries.get(seq)
        if entry is None:  # trimmed or deleted: nothing left to deliver
            self._group.pending.pop(seq, None)
            return None
        if pending is None:
            pending = self._group.pending[seq] = _Pending(self.consumer_id, 0, now)
        pending.consumer = self.consumer_id
        pending.count += 1
        pending.last_ms = now
        self._mine.add(seq)
        return MemoryDelivery(entry, pending.count)

    def _claim_ready(self, limit: int) -> list[Delivery]:
        group, now = self._group, _now_ms()
        out: list[Delivery] = []
        idle = self.reclaim_min_idle_ms
        # 1. this consumer's own pending entries left by a previous run (stable consumer_id),
        # 2. entries idle past the reclaim window on any member (XAUTOCLAIM),
        # 3. new entries (XREADGROUP >).
        for seq, p in list(group.pending.items()):
            if len(out) >= limit:
                return out
            if seq in self._mine:
                continue
            own_leftover = not self._recovered and p.consumer == self.consumer_id
            if own_leftover or (idle and now - p.last_ms >= idle):
                d = self._take(seq, p, now)
                if d is not None:
                    out.append(d)
        self._recovered = True
        stream = self._stream
        while len(out) < limit and group.last_delivered + 1 < stream.next_seq:
            group.last_delivered += 1
            if group.last_delivered in stream.entries:
                d = self._take(group.last_delivered, None, now)
                if d is not None:
                    out.append(d)
        return out

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            self._broker.check()
            if self._closed:
                return []
            limit = min(max_messages, self.max_outstanding - len(self._mine))
            if limit <= 0:
                return []
            got = self._claim_ready(limit)
            if got:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Wake on a publish, or in time to notice idle work reaching the reclaim window.
            wait = remaining
            if self.reclaim_min_idle_ms:
                wait = min(wait, self.reclaim_min_idle_ms / 4000)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._stream.changed.wait()

    async def complete(
        self,
        delivery: Delivery,
        publish: Sequence[Outbound] = (),
        remember: Remember | None = None,
    ) -> None:
        self._broker.check()
        assert isinstance(delivery, MemoryDelivery)
        if remember is not None:
            self._broker.hub.ledger[(self.agent, remember.task_id)] = _LedgerEntry(
                True, self.consumer_id, _now_ms() + remember.ttl_ms, remember.result
            )
        await self._broker.publish(publish)
        stream = self._stream
        self._group.pending.pop(delivery.seq, None)
        self._mine.discard(delivery.seq)
        stream.trim_acked()
        stream.notify()

    async def extend(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        self._broker.check()
        now = _now_ms()
        pending = self._group.pending
        for d in deliveries:
            assert isinstance(d, MemoryDelivery)
            p = pending.get(d.seq)
            if p is not None and p.consumer == self.consumer_id:
                p.last_ms = now
        ledger = self._broker.hub.ledger
        for task_id in task_ids:
            e = ledger.get((self.agent, task_id))
            if e is not None and not e.done and e.owner == self.consumer_id:
                e.expires_ms = now + self.lease_ms

    async def release(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        self._broker.check()
        pending = self._group.pending
        for d in deliveries:
            assert isinstance(d, MemoryDelivery)
            p = pending.get(d.seq)
            if p is not None and p.consumer == self.consumer_id:
                p.last_ms = -(10**12)  # idle "forever": the next fetch of any member takes it
            self._mine.discard(d.seq)
        ledger = self._broker.hub.ledger
        for task_id in task_ids:
            e = ledger.get((self.agent, task_id))
            if e is not None and not e.done and e.owner == self.consumer_id:
                del ledger[(self.agent, task_id)]
        self._stream.notify()

    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        self._broker.check()
        now = _now_ms()
        ledger = self._broker.hub.ledger
        out: list[Claim] = []
        for task_id in task_ids:
            key = (self.agent, task_id)
            e = ledger.get(key)
            if e is not None and e.expires_ms > now:
                if e.done:
                    out.append(Claim(ClaimState.DONE, result=e.result))
                    continue
                if e.owner != self.consumer_id:
                    out.append(Claim(ClaimState.BUSY, owner=e.owner))
                    continue
            ledger[key] = _LedgerEntry(False, self.consumer_id, now + self.lease_ms)
            out.append(Claim(ClaimState.CLAIMED))
        return out

    async def close(self) -> None:
        self._closed = True
        self._mine.clear()
        self._broker.consumers.discard(self)
        self._group.consumers.discard(self.consumer_id)
        self._stream.notify()

    def crash(self) -> None:
        """Test hook: vanish like a killed process (no release, no ack)."""
        self._closed = True
        self._mine.clear()
        self._broker.consumers.discard(self)


class MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic
        self._pos = broker.hub.stream(topic).next_seq - 1
        self._closed = False

    async def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            self._broker.check()
            stream = self._broker.hub.stream(self._topic)
            out = [
                Message(e.body, e.headers, str(e.seq), e.timestamp_ms)
                for e in stream.after(self._pos)
            ]
            if out:
                self._pos = int(out[-1].id)
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    await stream.changed.wait()
            except TimeoutError:
                break
        return []

    async def close(self) -> None:
        self._closed = True
        self._broker.hub.stream(self._topic).notify()


class MemoryBroker(Broker):
    """In-process broker for tests and single-process use; see the module docstring."""

    scheme = "memory"

    def __init__(self, url: str = "memory://", **_options: Any) -> None:
        super().__init__(url)
        self.hub = _hub(url)
        self.consumers: set[MemoryTaskConsumer] = set()
        self._connected = False
        self._down = False

    def check(self) -> None:
        if self._down:
            raise BrokerUnavailable(f"{self.display_url} is down (simulated)")

    def simulate_outage(self, down: bool = True) -> None:
        """Test hook: make every call fail as if the broker went away, until called with False."""
        self._down = down

    async def connect(self) -> None:
        self.check()
        self._connected = True

    async def close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.close()
        self._connected = False

    async def ping(self, timeout: float = 2.0) -> bool:
        return self._connected and not self._down

    async def publish(self, messages: Sequence[Outbound]) -> None:
        self.check()
        for m in messages:
            self.hub.stream(m.topic).append(m.body, m.headers)

    async def ensure_task_topic(self, agent: str) -> None:
        self.check()
        self.hub.stream(topics.task_topic(agent)).groups.setdefault(
            topics.group_name(agent), _Group()
        )

    def task_consumer(
        self,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> MemoryTaskConsumer:
        return MemoryTaskConsumer(
            self,
            agent,
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
        )

    async def subscribe(self, topic: str) -> Subscription:
        self.check()
        return MemorySubscription(self, topic)

    async def read(
        self, topic: str, *, since_ms: int | None = None, limit: int = 1000
    ) -> list[Message]:
        self.check()
        out: list[Message] = []
        for e in self.hub.stream(topic).entries.values():
            if since_ms is not None and e.timestamp_ms < since_ms:
                continue
            out.append(Message(e.body, e.headers, str(e.seq), e.timestamp_ms))
            if len(out) >= limit:
                break
        return out

    async def delete(self, topic: str, ids: Sequence[str]) -> int:
        self.check()
        entries = self.hub.stream(topic).entries
        removed = 0
        for i in ids:
            if entries.pop(int(i), None) is not None:
                removed += 1
        return removed

    async def purge(self, topic: str) -> int:
        self.check()
        stream = self.hub.stream(topic)
        n = len(stream.entries)
        stream.entries.clear()
        return n

    async def queue_stats(self, agent: str) -> QueueStats:
        self.check()
        stream = self.hub.stream(topics.task_topic(agent))
        group = stream.groups.get(topics.group_name(agent), _Group())
        depth = sum(1 for seq in stream.entries if seq > group.last_delivered)
        dead = len(self.hub.stream(topics.dead_topic(agent)).entries)
        return QueueStats(agent, depth, len(group.pending), dead, len(group.consumers))

    async def put_presence(self, worker_id: str, record: bytes, ttl_ms: int) -> None:
        self.check()
        self.hub.presence[worker_id] = (record, _now_ms() + ttl_ms)

    async def drop_presence(self, worker_id: str) -> None:
        self.check()
        self.hub.presence.pop(worker_id, None)

    async def list_presence(self) -> list[bytes]:
        self.check()
        now, presence = _now_ms(), self.hub.presence
        for worker_id in [w for w, (_, expires) in presence.items() if expires <= now]:
            del presence[worker_id]  # prune as we go, like the other adapters
        return [record for record, _ in presence.values()]
