"""``redis://`` / ``rediss://``: the broker contract on Redis Streams (DESIGN §3, §4).

FastStream's ``RedisBroker`` owns the connection (URL, TLS, security options); the hot
path then talks to the ``redis.asyncio`` client it returns. FastStream's stream
subscriber cannot serve the contract: it reads and writes its own ``__data__`` message
format instead of the wire layout below, runs handlers one at a time, and with
``min_idle_time`` only XAUTOCLAIMs one entry per call and never reads new ones.

Wire layout: a stream entry has a field ``body`` (exact bytes) plus one field per header.
An agent's task stream is ``murmur.<agent>.tasks``; its consumer group has the same name;
the consumer name is the worker's ``consumer_id``.

* **fetch**: first this consumer's own pending entries (a restart with a stable
  ``consumer_id`` recovers its work at once), then ``XAUTOCLAIM`` of entries idle past
  ``reclaim_min_idle_ms`` (when idle, and at least every quarter of that window), then
  ``XREADGROUP ... >``. Redelivery counts come from ``XPENDING`` on that rare path.
* **complete** / **publish**: coalesced per event-loop tick
  (:mod:`murmur.brokers._redis_batch`): ledger ``SET``, ``XADD``\\ s, then ``XACK``,
  in one atomic Lua call per batch.
* **extend** / **release** / **claim**: one Lua script each
  (:mod:`murmur.brokers._redis_scripts`); the ledger is ``murmur:ledger:<agent>:<task_id>``.
* Acknowledged entries stay in a task stream until the consumers' periodic trim drops
  those every group has delivered and acknowledged (``_redis_scripts.TRIM``).
* A vanished group (a non-persistent server restarted, the key was deleted) is created
  again from id 0 on the next fetch; every connection error surfaces as
  :class:`~murmur.errors.BrokerUnavailable` and the same objects work again once the
  server is back.
* **presence** (DESIGN §5): a hash ``murmur.presence`` (worker id -> record) plus a
  sorted set ``murmur.presence.expiry`` (worker id -> expiry), both written by one Lua
  script. Not one ``SET PX`` key per worker: listing those needs ``SCAN`` over the whole
  keyspace or an index that drifts from the keys, while the sorted set answers "who is
  live" with one range query, and expiry is taken from the server's ``TIME``, so hosts
  with skewed clocks agree (Redis 7.0 has no per-field ``HEXPIRE``). Listing prunes the
  expired members, which is how a killed worker's record goes away.
* The hot path (``XREADGROUP >`` and the write batch) sends one hiredis-packed command
  per round trip and skips redis-py's per-command machinery
  (:mod:`murmur.brokers._redis_wire`), which would cost more CPU per task than the rest
  of the adapter together.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.exceptions as rex
import structlog
from faststream.redis import RedisBroker as FastStreamRedisBroker
from faststream.redis.schemas.types import RedisConnectionParams

from murmur.brokers import _redis_scripts as scripts
from murmur.brokers import _redis_wire as wire
from murmur.brokers._redis_batch import TopicPolicies, Write, WriteBatcher
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
from murmur.brokers.urls import redact
from murmur.errors import BrokerUnavailable, ConfigurationError
from murmur.messages import topics

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

_log = structlog.get_logger("murmur.brokers.redis")

# Transport failures: the worker catches BrokerUnavailable, backs off and retries.
# (redis' BusyLoadingError, raised while a restarted server loads its AOF, is one.)
_TRANSPORT_ERRORS = (rex.ConnectionError, rex.TimeoutError, OSError)

_MAX_BLOCK_S = 2.0  # longest blocking read: bounds how long close() waits on a fetch
_IDLE_RECLAIM_S = 1.0  # an idle member looks for idle/released work at least this often
_AUTOCLAIM_PAGES = 4  # XAUTOCLAIM cursor steps per fetch (each scans up to 10 x COUNT)
_SCRIPT_CHUNK = 1000  # ids per Lua call (Lua's unpack() limit is ~8000)
_LEAVE_TIMEOUT_S = 2.0
_PRESENCE_KEYS = [topics.PRESENCE, f"{topics.PRESENCE}.expiry"]  # see the module docstring

_CONNECTION_OPTIONS = frozenset(RedisConnectionParams.__optional_keys__) | {"security"}
# socket_timeout off (redis-py 8 defaults to 5 s): with one set, redis-py sends under
# asyncio.wait_for, which on Python 3.11 can swallow the task's cancellation when the send
# completes in the same loop iteration (seen as Client.close()/Worker.stop() hanging on a
# reader that never ends). Round trips are bounded by ``command_timeout`` instead.
_DEFAULT_CONNECTION: dict[str, Any] = {"socket_connect_timeout": 5.0, "socket_timeout": None}


def _is(exc: rex.ResponseError, code: str) -> bool:
    return str(exc).startswith(code)


def _decode_entry(fields: dict[bytes, bytes]) -> tuple[bytes, dict[str, str]]:
    """Split a stream entry into (body, headers); header names/values decoded once."""
    body = fields.pop(b"body", b"")
    return body, {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}


def _split_fields(fields: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """Raw entry fields ``[b"body", body, name, value, ...]`` -> (body, headers)."""
    if fields[0] == b"body":  # murmur publishers put the body first
        names, values = fields[2::2], fields[3::2]
        body = fields[1]
    else:
        names, values = fields[0::2], fields[1::2]
        body = b""
        if b"body" in names:
            i = names.index(b"body")
            body = values.pop(i)
            del names[i]
    pairs = zip(names, values, strict=True)
    return body, {k.decode(): v.decode("utf-8", "replace") for k, v in pairs}


def _resp2_url(url: str) -> str:
    """``url`` with ``protocol=2``: the adapter reads raw RESP2 replies (redis-py 8
    defaults to RESP3, whose maps and push messages the fast lane does not parse)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    if any(k == "protocol" and v.strip() != "2" for k, v in query):
        raise ConfigurationError(
            f"{redact(url)}: murmur talks RESP2 to Redis; remove protocol= from the URL"
        )
    query = [(k, v) for k, v in query if k != "protocol"] + [("protocol", "2")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _message(entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    body, headers = _decode_entry(fields)
    sid = entry_id.decode()
    return Message(body, headers, sid, int(sid.partition("-")[0]))


class RedisDelivery(Delivery):
    """A delivery that remembers its raw entry id, so acknowledging re-encodes nothing."""

    __slots__ = ("entry_id",)

    def __init__(
        self, body: bytes, headers: Mapping[str, str], delivery_count: int, entry_id: bytes
    ) -> None:
        super().__init__(body, headers, delivery_count, entry_id.decode())
        self.entry_id = entry_id


class RedisTaskConsumer(TaskConsumer):
    """One member of an agent's consumer group; see the module docstring for the flow."""

    def __init__(
        self,
        broker: RedisBroker,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> None:
        super().__init__(
            agent=agent,
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
        )
        self.max_deliveries = max_deliveries
        self._broker = broker
        self._stream = topics.task_topic(agent)
        self._group = topics.group_name(agent)
        self._me = consumer_id.encode()
        self._ledger_prefix = f"murmur:ledger:{agent}:"
        self._mine: set[bytes] = set()  # entry ids handed out and not completed/released
        self._leftovers_from: bytes | None = b"0"  # own pending entries still to re-read
        self._cursor = b"0-0"  # XAUTOCLAIM position
        self._last_autoclaim = float("-inf")
        self._idle = True  # the last XREADGROUP > found nothing
        self._lock = asyncio.Lock()
        self._closed = False
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return len(self._mine)

    @property
    def closed(self) -> bool:
        return self._closed

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        async with self._broker.guard():
            await self._broker.create_group(self._stream)
        self._closed = False
        self._leftovers_from = b"0"
        self._broker.consumers.add(self)
        if self._maintenance is None:
            self._maintenance = asyncio.create_task(
                self._maintain(), name=f"murmur-redis-trim-{self._stream}"
            )

    async def close(self) -> None:
        """Leave the group: outstanding deliveries stay pending (reclaimed by the others),
        entries read but never handed out are handed back at once (``scripts.LEAVE``)."""
        if self._closed:
            return
        self._closed = True
        self._broker.consumers.discard(self)
        if self._maintenance is not None:
            self._maintenance.cancel()
            self._maintenance = None
        outstanding, self._mine = list(self._mine), set()
        with contextlib.suppress(Exception):  # best effort: the server may be gone
            async with asyncio.timeout(_LEAVE_TIMEOUT_S):
                await self._broker.script("leave")(
                    keys=[self._stream], args=[self._group, self.consumer_id, *outstanding]
                )

    # fetching --------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        max_block = self._broker.max_block_s
        async with self._lock:  # concurrent fetches must not overshoot max_outstanding
            while not self._closed:
                limit = min(max_messages, self.max_outstanding - len(self._mine))
                if limit <= 0:  # full: nothing to claim until work completes; don't spin
                    await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
                    return []
                try:
                    async with asyncio.timeout(self._broker.command_timeout + max_block):
                        got = await self._fetch_once(limit, deadline)
                except rex.ResponseError as exc:
                    if not _is(exc, "NOGROUP"):
                        raise
                    await self._recreate_group()
                    got = []
                except _TRANSPORT_ERRORS as exc:
                    if self.closed:  # the broker closed the connection under the read
                        return []
                    raise self._broker.unavailable(exc) from exc
                if got or time.monotonic() >= deadline:
                    return got
        return []

    async def _fetch_once(self, limit: int, deadline: float) -> list[Delivery]:
        if self._leftovers_from is not None:
            got = await self._read_leftovers(limit)
            if got or self._leftovers_from is not None:
                return got
        now = time.monotonic()
        next_poll = now + self._broker.max_block_s
        reclaim = self.reclaim_min_idle_ms
        if reclaim:
            quarter = reclaim / 4000
            every = min(quarter, _IDLE_RECLAIM_S) if self._idle else quarter
            if now >= self._last_autoclaim + every:
                self._last_autoclaim = now
                got = await self._autoclaim(limit, reclaim)
                if got:
                    return got
            next_poll = min(next_poll, self._last_autoclaim + min(quarter, _IDLE_RECLAIM_S))
        return await self._read_new(limit, min(deadline, next_poll) - time.monotonic())

    async def _read_new(self, limit: int, block_s: float) -> list[Delivery]:
        """``XREADGROUP ... >``: the hot path. New entries have delivery count 1."""
        args: list[Any] = ["XREADGROUP", "GROUP", self._group, self.consumer_id, "COUNT", limit]
        block_ms = int(block_s * 1000)
        if block_ms > 0:  # BLOCK 0 would mean "forever"
            args += ("BLOCK", block_ms)
        args += ("STREAMS", self._stream, ">")
        reply = await wire.call(self._broker.client, wire.pack(args))
        entries = reply[0][1] if reply else ()
        self._idle = not entries
        mine = self._mine
        out: list[Delivery] = []
        for entry_id, fields in entries:
            body, headers = _split_fields(fields)
            mine.add(entry_id)
            out.append(RedisDelivery(body, headers, 1, entry_id))
        return out

    async def _read_leftovers(self, limit: int) -> list[Delivery]:
        """Re-read this consumer's own pending entries, left by a previous run."""
        reply = await self._broker.execute(
            "XREADGROUP", "GROUP", self._group, self.consumer_id, "COUNT", limit,
            "STREAMS", self._stream, self._leftovers_from,
        )  # fmt: skip
        entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
        self._leftovers_from = entries[-1][0] if len(entries) >= limit else None
        return await self._redelivered([e for e in entries if e[0] not in self._mine])

    async def _autoclaim(self, limit: int, min_idle_ms: int) -> list[Delivery]:
        """XAUTOCLAIM idle entries of any member, walking the cursor a few pages."""
        for _ in range(_AUTOCLAIM_PAGES):
            start = self._cursor
            reply = await self._broker.execute(
                "XAUTOCLAIM", self._stream, self._group, self.consumer_id, min_idle_ms,
                start, "COUNT", limit,
            )  # fmt: skip
            self._cursor = reply[0]
            entries = reply[1]
            if any(entry_id is None for entry_id, _ in entries):
                await self._ack_deleted_claims(start, self._cursor, len(entries))
                entries = [e for e in entries if e[0] is not None]
            if entries:
                return await self._redelivered(entries)
            if self._cursor == b"0-0":
                break
        return []

    async def _ack_deleted_claims(self, start: bytes, cursor: bytes, n: int) -> None:
        """Redis < 7 hands back entries deleted while pending as nils, without ids, and
        leaves them in our PEL. Find our pending ids in the scanned range whose entry no
        longer exists and acknowledge them (safe whoever owns them: they can never be
        delivered). Redis 7 drops them from the PEL itself."""
        client = self._broker.client
        end = b"+" if cursor == b"0-0" else cursor
        pending = await client.xpending_range(
            self._stream, self._group, start, end, n + len(self._mine), self.consumer_id
        )
        candidates = [p["message_id"] for p in pending if p["message_id"] not in self._mine]
        if not candidates:
            return
        pipe = client.pipeline(transaction=False)
        for entry_id in candidates:
            pipe.xrange(self._stream, entry_id, entry_id, count=1)
        found = await pipe.execute()
        gone = [i for i, hit in zip(candidates, found, strict=True) if not hit]
        if gone:
            await client.xack(self._stream, self._group, *gone)

    async def _redelivered(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Delivery]:
        """Deliveries for re-read or reclaimed entries, counts from XPENDING (rare path).

        Entries deleted while pending come back without fields: acknowledge and skip."""
        live = [entry_id for entry_id, fields in entries if fields]
        gone = [entry_id for entry_id, fields in entries if not fields]
        if not live and not gone:
            return []
        pipe = self._broker.client.pipeline(transaction=False)
        for entry_id in live:
            pipe.xpending_range(self._stream, self._group, entry_id, entry_id, 1)
        if gone:
            pipe.xack(self._stream, self._group, *gone)
        replies = await pipe.execute()
        counts = {
            r[0]["message_id"]: r[0]["times_delivered"]
            for r in replies[: len(live)]
            if r and r[0]["consumer"] == self._me
        }
        out: list[Delivery] = []
        for entry_id, fields in entries:
            count = counts.get(entry_id)
            if count is None:  # not ours any more (raced), or gone
                continue
            body, headers = _decode_entry(fields)
            self._mine.add(entry_id)
            out.append(RedisDelivery(body, headers, count, entry_id))
        return out

    async def _recreate_group(self) -> None:
        """The group vanished (server restarted without persistence, key deleted)."""
        _log.warning("redis_group_recreated", group=self._group)
        self._cursor = b"0-0"
        async with self._broker.guard():
            await self._broker.create_group(self._stream)

    # completing ------------------------------------------------------------------------

    async def complete(
        self,
        delivery: Delivery,
        publish: Sequence[Outbound] = (),
        remember: Remember | None = None,
    ) -> None:
        assert isinstance(delivery, RedisDelivery), "not a delivery of this broker"
        ledger = None
        if remember is not None:
            key = self._ledger_prefix + remember.task_id
            ledger = (key, b"D" + remember.result, remember.ttl_ms)
        await self._broker.batcher.submit(Write(publish, self._stream, delivery.entry_id, ledger))
        self._mine.discard(delivery.entry_id)

    async def extend(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        await self._own_entries("extend", deliveries, task_ids)

    async def release(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        try:
            await self._own_entries("release", deliveries, task_ids)
        finally:
            # Let go even when the round trip failed (server down): the caller no longer
            # holds them, nobody renews them, so they go idle and XAUTOCLAIM (ours
            # included) takes them back. Counting them as held would leave a full consumer
            # fetching nothing until then.
            for d in deliveries:
                assert isinstance(d, RedisDelivery), "not a delivery of this broker"
                self._mine.discard(d.entry_id)

    async def _own_entries(
        self, name: str, deliveries: Sequence[Delivery], task_ids: Sequence[str]
    ) -> None:
        """Run the EXTEND or RELEASE script over our entries and ledger claims, chunked."""
        ids: list[bytes] = []
        for d in deliveries:
            assert isinstance(d, RedisDelivery), "not a delivery of this broker"
            ids.append(d.entry_id)
        keys = [self._ledger_prefix + t for t in task_ids]
        script = self._broker.script(name)
        async with self._broker.guard():
            for i in range(0, max(len(ids), len(keys)), _SCRIPT_CHUNK):
                chunk = slice(i, i + _SCRIPT_CHUNK)
                await script(
                    keys=[self._stream, *keys[chunk]],
                    args=[self._group, self.consumer_id, self.lease_ms, *ids[chunk]],
                )

    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        script = self._broker.script("claim")
        out: list[Claim] = []
        async with self._broker.guard():
            for i in range(0, len(task_ids), _SCRIPT_CHUNK):
                keys = [self._ledger_prefix + t for t in task_ids[i : i + _SCRIPT_CHUNK]]
                for state, payload in await script(keys=keys, args=[self._me, self.lease_ms]):
                    if state == 1:
                        out.append(Claim(ClaimState.CLAIMED))
                    elif state == 2:
                        out.append(Claim(ClaimState.DONE, result=payload))
                    else:
                        out.append(Claim(ClaimState.BUSY, owner=payload.decode()))
        return out

    # maintenance -----------------------------------------------------------------------

    async def trim_acknowledged(self) -> int:
        """Drop task entries every group has delivered and acknowledged; returns how many.

        The rule (``_redis_scripts.TRIM``): floor = min over all groups of (oldest pending
        id, else last-delivered-id + 1); ``XTRIM MINID ~ floor``. It can never drop an
        entry that is pending or not yet delivered in any group. Runs every
        ``trim_interval`` seconds while the consumer is started.
        """
        async with self._broker.guard():
            return int(await self._broker.script("trim")(keys=[self._stream]))

    async def prune_members(self, idle_ms: int) -> int:
        """Forget members with nothing pending unseen for ``idle_ms`` (crashed workers)."""
        async with self._broker.guard():
            removed = await self._broker.script("prune")(
                keys=[self._stream], args=[self._group, idle_ms, self.consumer_id]
            )
        return int(removed)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self._broker.trim_interval)
            try:
                await self.trim_acknowledged()
                await self.prune_members(self._broker.prune_idle_ms)
            except Exception as exc:  # best effort; the next round tries again
                _log.debug("redis_maintenance_failed", stream=self._stream, error=str(exc))


class RedisSubscription(Subscription):
    """``XREAD BLOCK`` from the stream's last id at subscribe time."""

    def __init__(self, broker: RedisBroker, topic: str, last_id: bytes) -> None:
        self._broker = broker
        self._topic = topic
        self._last_id = last_id
        self._closed = False

    async def get(self, timeout: float) -> list[Message]:
        deadline = time.monotonic() + timeout
        while not self._closed:
            block_ms = int(min(deadline - time.monotonic(), self._broker.max_block_s) * 1000)
            args: list[Any] = ["XREAD", "COUNT", 1000]
            if block_ms > 0:
                args += ("BLOCK", block_ms)
            args += ("STREAMS", self._topic, self._last_id)
            async with self._broker.guard(max(block_ms, 0) / 1000):
                reply = await self._broker.execute(*args)
            if reply and reply[0][1]:
                entries = reply[0][1]
                self._last_id = entries[-1][0]
                return [_message(entry_id, fields) for entry_id, fields in entries]
            if block_ms <= 0 or time.monotonic() >= deadline:
                break
        return []

    async def close(self) -> None:
        self._closed = True
        self._broker.subscriptions.discard(self)


class RedisBroker(Broker):
    """Redis Streams adapter. ``RedisBroker(url, **options)``.

    Options: ``results_maxlen`` (10 000) and ``results_ttl_ms`` (1 day) cap and expire
    results/events streams; ``dead_maxlen`` (1 000 000) caps dead-letter streams,
    ``stream_maxlen`` (100 000) any other non-task stream (heartbeats);
    ``trim_interval`` (30 s) paces task-stream trimming; ``prune_idle_ms`` (5 min) when
    idle members without pending work are forgotten; ``command_timeout`` (30 s) bounds
    every round trip (a dead server or half-open connection -> BrokerUnavailable).
    Anything else is passed to FastStream's ``RedisBroker`` as a connection option
    (``security``, ``max_connections``, ``socket_connect_timeout``, ...).
    """

    scheme = "redis"

    def __init__(
        self,
        url: str = "redis://localhost:6379",
        *,
        results_maxlen: int = 10_000,
        results_ttl_ms: int = 86_400_000,
        dead_maxlen: int = 1_000_000,
        stream_maxlen: int = 100_000,
        trim_interval: float = 30.0,
        prune_idle_ms: int = 300_000,
        command_timeout: float = 30.0,
        **options: Any,
    ) -> None:
        super().__init__(url)
        for name, value in (
            ("results_maxlen", results_maxlen),
            ("results_ttl_ms", results_ttl_ms),
            ("dead_maxlen", dead_maxlen),
            ("stream_maxlen", stream_maxlen),
            ("trim_interval", trim_interval),
            ("prune_idle_ms", prune_idle_ms),
            ("command_timeout", command_timeout),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(f"redis broker option {name} must be > 0, got {value!r}")
        unknown = sorted(set(options) - _CONNECTION_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"unknown redis broker option(s) {', '.join(unknown)}; murmur options are "
                "results_maxlen, results_ttl_ms, dead_maxlen, stream_maxlen, trim_interval, "
                "prune_idle_ms, command_timeout; connection options: "
                + ", ".join(sorted(_CONNECTION_OPTIONS))
            )
        self.trim_interval = float(trim_interval)
        self.command_timeout = float(command_timeout)
        socket_timeout = options.get("socket_timeout")
        # Blocking reads must end well before a socket timeout would cut them off.
        self.max_block_s = min(_MAX_BLOCK_S, socket_timeout / 2) if socket_timeout else _MAX_BLOCK_S
        self.prune_idle_ms = int(prune_idle_ms)
        try:
            self._fs = FastStreamRedisBroker(
                _resp2_url(url),
                logger=None,  # type: ignore[arg-type]  # None silences FastStream's own logs
                **{
                    **_DEFAULT_CONNECTION,
                    **options,
                    "decode_responses": False,
                },
            )
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid redis URL {self.display_url!r}: {exc}") from None
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._write_script: wire.FastScript | None = None
        self.consumers: set[RedisTaskConsumer] = set()
        self.subscriptions: set[RedisSubscription] = set()
        self.batcher = WriteBatcher(
            self._run_write,
            TopicPolicies(
                results_maxlen=results_maxlen,
                results_ttl_ms=results_ttl_ms,
                dead_maxlen=dead_maxlen,
                stream_maxlen=stream_maxlen,
            ),
            self.unavailable,
        )

    # plumbing shared with the consumer and subscription ---------------------------------

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise BrokerUnavailable(f"redis broker {self.display_url} is not connected")
        return self._client

    @property
    def execute(self) -> Callable[..., Awaitable[Any]]:
        """``client.execute_command``: raw commands, parsed by redis-py's callbacks."""
        execute: Callable[..., Awaitable[Any]] = self.client.execute_command
        return execute

    def script(self, name: str) -> AsyncScript:
        """A registered Lua script; redis-py reloads it if the server lost its cache."""
        self.client  # noqa: B018 - raises BrokerUnavailable when not connected
        return self._scripts[name]

    async def _run_write(self, packed_args: list[bytes], nargs: int) -> Any:
        if self._write_script is None:
            raise BrokerUnavailable(f"redis broker {self.display_url} is not connected")
        async with asyncio.timeout(self.command_timeout):
            return await self._write_script.run(packed_args, nargs)

    def unavailable(self, exc: BaseException) -> BaseException:
        """The exception callers see for ``exc``: transport failures -> BrokerUnavailable."""
        if isinstance(exc, BrokerUnavailable):
            return exc
        if isinstance(exc, asyncio.CancelledError):
            return BrokerUnavailable(f"redis broker {self.display_url} was closed")
        if isinstance(exc, TimeoutError) and not str(exc):
            return BrokerUnavailable(
                f"redis at {self.display_url} did not answer within {self.command_timeout:g}s"
            )
        if isinstance(exc, _TRANSPORT_ERRORS):
            return BrokerUnavailable(f"redis at {self.display_url} is unavailable: {exc}")
        return exc

    @contextlib.asynccontextmanager
    async def guard(self, extra_s: float = 0.0) -> AsyncIterator[None]:
        """Bound a round trip by ``command_timeout`` (+ ``extra_s`` of server-side
        blocking) and turn transport failures into BrokerUnavailable."""
        try:
            async with asyncio.timeout(self.command_timeout + extra_s):
                yield
        except BrokerUnavailable:
            raise
        except _TRANSPORT_ERRORS as exc:
            raise self.unavailable(exc) from exc

    async def create_group(self, stream: str) -> None:
        """``XGROUP CREATE <stream> <stream> 0 MKSTREAM``, idempotent.

        Id ``0``, not ``$``: tasks XADDed by any publisher before a worker existed are
        processed too.
        """
        try:
            await self.execute("XGROUP", "CREATE", stream, stream, "0", "MKSTREAM")
        except rex.ResponseError as exc:
            if not _is(exc, "BUSYGROUP"):
                raise

    # lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._client is not None:
            return
        try:
            client: Redis = await self._fs.connect()
            async with asyncio.timeout(self.command_timeout):
                await client.ping()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self._fs.stop()
            if isinstance(exc, rex.RedisError | OSError):
                reason = str(exc) or f"no answer within {self.command_timeout:g}s"
                raise BrokerUnavailable(
                    f"cannot connect to redis at {self.display_url}: {reason}"
                ) from exc
            raise
        self._client = client
        self._write_script = wire.FastScript(client, scripts.WRITE)
        self._scripts = {
            name: client.register_script(text)
            for name, text in (
                ("claim", scripts.CLAIM),
                ("extend", scripts.EXTEND),
                ("release", scripts.RELEASE),
                ("trim", scripts.TRIM),
                ("prune", scripts.PRUNE),
                ("leave", scripts.LEAVE),
                ("count_after", scripts.COUNT_AFTER),
                ("presence_put", scripts.PRESENCE_PUT),
                ("presence_drop", scripts.PRESENCE_DROP),
                ("presence_list", scripts.PRESENCE_LIST),
            )
        }

    async def close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.close()
        for sub in list(self.subscriptions):
            await sub.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LEAVE_TIMEOUT_S):
                await self.batcher.drain()
        self._client = None
        self._write_script = None
        with contextlib.suppress(Exception):
            await self._fs.stop()

    async def ping(self, timeout: float = 2.0) -> bool:
        client = self._client
        if client is None:
            return False
        try:
            async with asyncio.timeout(timeout):
                return bool(await client.ping())
        except Exception:
            return False

    # publishing --------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outbound]) -> None:
        if messages:
            await self.batcher.submit(Write(messages))

    async def ensure_task_topic(self, agent: str) -> None:
        async with self.guard():
            await self.create_group(topics.task_topic(agent))

    # consuming ---------------------------------------------------------------------------

    def task_consumer(
        self,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> RedisTaskConsumer:
        return RedisTaskConsumer(
            self,
            agent,
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
            max_deliveries=max_deliveries,
        )

    async def subscribe(self, topic: str) -> Subscription:
        # Resolve "$" now: everything published after this returns has a larger id.
        async with self.guard():
            last = await self.execute("XREVRANGE", topic, "+", "-", "COUNT", 1)
        sub = RedisSubscription(self, topic, last[0][0] if last else b"0-0")
        self.subscriptions.add(sub)
        return sub

    # inspection and repair -----------------------------------------------------------------

    async def read(
        self, topic: str, *, since_ms: int | None = None, limit: int = 1000
    ) -> list[Message]:
        if limit <= 0:
            return []
        start = f"{since_ms}-0" if since_ms is not None and since_ms > 0 else "-"
        async with self.guard():
            entries = await self.execute("XRANGE", topic, start, "+", "COUNT", limit)
        return [_message(entry_id, fields) for entry_id, fields in entries]

    async def delete(self, topic: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            async with self.guard():
                return int(await self.client.xdel(topic, *ids))
        except rex.ResponseError as exc:
            raise ConfigurationError(f"invalid ids for {topic!r}: {exc}") from None

    async def purge(self, topic: str) -> int:
        # XTRIM (not DEL) keeps the key's last id, groups and their consumers.
        async with self.guard():
            return int(await self.client.xtrim(topic, maxlen=0, approximate=False))

    async def queue_stats(self, agent: str) -> QueueStats:
        stream, dead_topic = topics.task_topic(agent), topics.dead_topic(agent)
        async with self.guard():
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_groups(stream)
            pipe.xlen(dead_topic)
            pipe.xlen(stream)
            groups, dead, length = await pipe.execute(raise_on_error=False)
            for reply in (dead, length):
                if isinstance(reply, Exception):
                    raise reply
            if isinstance(groups, rex.ResponseError):
                groups = []  # no such key: nothing was ever published
            elif isinstance(groups, Exception):
                raise groups
            name = topics.group_name(agent).encode()
            group = next((g for g in groups if g["name"] == name), None)
            if group is None:
                return QueueStats(agent, int(length), 0, int(dead), 0)
            lag = group.get("lag")
            if lag is None:  # Redis < 7, or a count Redis cannot tell after deletions
                lag = await self.script("count_after")(
                    keys=[stream], args=[group["last-delivered-id"]]
                )
        pending, consumers = int(group["pending"]), int(group["consumers"])
        return QueueStats(agent, int(lag), pending, int(dead), consumers)

    # presence ------------------------------------------------------------------------------

    async def put_presence(self, worker_id: str, record: bytes, ttl_ms: int) -> None:
        async with self.guard():
            await self.script("presence_put")(
                keys=_PRESENCE_KEYS, args=[worker_id, record, max(1, int(ttl_ms))]
            )

    async def drop_presence(self, worker_id: str) -> None:
        async with self.guard():
            await self.script("presence_drop")(keys=_PRESENCE_KEYS, args=[worker_id])

    async def list_presence(self) -> list[bytes]:
        async with self.guard():
            records: list[bytes] = await self.script("presence_list")(keys=_PRESENCE_KEYS)
        return records

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "transport": "faststream+redis-py"}


__all__ = ["RedisBroker", "RedisDelivery", "RedisSubscription", "RedisTaskConsumer"]
