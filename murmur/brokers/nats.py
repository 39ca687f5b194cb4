"""``nats://``: the broker contract on NATS JetStream (DESIGN §4), server 2.9 or newer.

Why FastStream only connects: FastStream's ``NatsBroker`` owns the connection (server
lists, TLS, credentials, reconnect options), but its pull subscriber runs handlers one
message at a time and acknowledges on its own, while the worker needs batches it can hold,
extend (``+WPI``), hand back (``-NAK``) and acknowledge only after the result is stored.
So consumption, acks and publishes use the nats-py client FastStream wraps, directly.

JetStream only, never core NATS, for tasks: the original murmur used core NATS queue
groups and lost every task published while no worker was connected.

Layout, created idempotently (a differing config is updated: last writer wins):

* ``MURMUR_TASKS_<agent>``: ``murmur.<agent>.tasks``, work-queue retention (an ack
  deletes), file storage. One stream per agent, not one ``murmur.*.tasks`` stream: that
  pattern overlaps ``murmur.results.>`` and JetStream refuses overlapping streams. The
  stream exists once a client called :meth:`NatsBroker.ensure_task_topic` or any murmur
  process published to or consumed the agent; a non-murmur publisher hitting a missing
  stream gets a "no responders" error (never a silent loss).
* ``MURMUR_DEAD_<agent>``: ``murmur.<agent>.dead``, limits retention.
* ``MURMUR_REPLIES``: ``murmur.results.>`` and ``murmur.events.>``, ``max_age`` 1 h.
* ``MURMUR_HEARTBEATS``: ``murmur.heartbeats``, ``max_age`` 10 min.
* KV bucket ``murmur_ledger``: see :mod:`murmur.brokers._nats_ledger`.
* KV bucket ``murmur_presence`` (created on first use): see
  :mod:`murmur.brokers._nats_presence`.

Group: one durable pull consumer per agent shared by the fleet, ``murmur_<agent>_tasks``,
explicit acks, ``ack_wait = reclaim_min_idle_ms`` (1 h when reclaim is disabled), and
``max_deliver = -1``: the worker dead-letters by ``delivery_count``, so JetStream must keep
redelivering. Members with a different reclaim window update ``ack_wait`` (last writer
wins).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import functools
import time
from collections import deque
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import nats.errors
import nats.js.errors
from faststream.nats import NatsBroker as FastStreamNats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from murmur.brokers import _nats_presence as presence
from murmur.brokers._nats_api import (
    API,
    MISSING,
    NO_MESSAGE_FOUND,
    STREAM_NAME_IN_USE,
    STREAM_NOT_FOUND,
    UNAVAILABLE,
    JetStreamError,
    Layout,
    ReplyMux,
    StreamSpec,
    ack_fields,
    parse_json,
    status,
)
from murmur.brokers._nats_ledger import KvBucket, Ledger, bucket_spec
from murmur.brokers.base import (
    Broker,
    Claim,
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

_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
_ACK: Final = b"+ACK"
_NAK: Final = b"-NAK"
_PROGRESS: Final = b"+WPI"
_NO_RECLAIM_ACK_WAIT_S: Final = 3600.0  # reclaim disabled: redeliver only after an hour
_VERIFY_EVERY_S: Final = 5.0  # an idle consumer checks this often that it still exists
_REFUSED_PAUSE_S: Final = 0.25  # after a 409 (e.g. max_waiting reached) before pulling again
_NO_WAIT_ANSWER_S: Final = 1.0  # a no_wait pull unanswered this long: check the consumer


class NatsDelivery(Delivery):
    """A task handed out by the durable consumer; ``reply`` is its ``$JS.ACK`` subject."""

    __slots__ = ("reply", "seq")

    def __init__(self, msg: Msg, delivered: int, seq: int) -> None:
        self.body = msg.data
        self.headers = msg.headers or _NO_HEADERS
        self.delivery_count = delivered
        self.id = str(seq)
        self.reply = msg.reply
        self.seq = seq


def _message(msg: Msg) -> Message:
    _, seq, ts_ns = ack_fields(msg.reply)
    return Message(msg.data, msg.headers or _NO_HEADERS, str(seq), ts_ns // 1_000_000)


class NatsTaskConsumer(TaskConsumer):
    """One fleet member on the agent's shared durable pull consumer.

    Pulls go to a private inbox: first a ``no_wait`` request for up to the free budget
    (one round trip returns a full batch under load), and when nothing is there a lingering
    request that returns on the first arrival. At most one request is open at a time, so
    ``outstanding + buffered + still requested <= max_outstanding`` while the server
    answers (a request given up as lost may still deliver late; it lands in the buffer).
    Messages that arrive after ``fetch`` returned wait in the buffer for the next call
    (``extend`` keeps their lease too, ``close`` hands them back with a nak).

    A message JetStream redelivers while this member still holds it (its lease lapsed) is
    not handed out twice: the held delivery just takes the new ack subject and count.
    """

    def __init__(
        self,
        broker: NatsBroker,
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
        self._spec = broker.layout.tasks(agent)
        self._durable = topics.group_name(agent).replace(".", "_")
        self._next = f"{API}.CONSUMER.MSG.NEXT.{self._spec.name}.{self._durable}"
        self._mine: dict[int, NatsDelivery] = {}
        self._buffer: deque[Msg] = deque()
        self._live = 0  # messages the open pull request may still deliver
        self._live_no_wait = False
        self._live_until = 0.0  # loop time after which the open request is surely over
        self._pause_until = 0.0
        self._verify_at = 0.0
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._inbox = ""
        self._sub: Any = None
        self._ledger: Ledger | None = None
        self._closed = False

    @property
    def outstanding(self) -> int:
        return len(self._mine)

    @property
    def ack_wait_s(self) -> float:
        if not self.reclaim_min_idle_ms:
            return _NO_RECLAIM_ACK_WAIT_S
        return self.reclaim_min_idle_ms / 1000

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        topics.validate_agent_name(self.agent)
        broker = self._broker
        nc = broker.check()
        await broker.ensure_stream(self._spec)
        await broker.ensure_stream(broker.layout.dead(self.agent))
        self._ledger = Ledger(await broker.kv(), self.agent, self.consumer_id, self.lease_ms)
        await self._create_consumer()
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox, cb=self._on_msg)
        self._verify_at = asyncio.get_running_loop().time() + _VERIFY_EVERY_S
        broker.consumers.add(self)

    def consumer_config(self) -> dict[str, Any]:
        return {
            "durable_name": self._durable,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(self.ack_wait_s * 1e9),
            "max_deliver": -1,
            "filter_subject": self._spec.subjects[0],
            "replay_policy": "instant",
            "max_ack_pending": self._broker.max_ack_pending,
        }

    async def _create_consumer(self) -> None:
        """Create or update (same durable name) the shared consumer; recreate the stream
        first if the server lost it."""
        what = f"CONSUMER.DURABLE.CREATE.{self._spec.name}.{self._durable}"
        body = {"stream_name": self._spec.name, "config": self.consumer_config()}
        try:
            await self._broker.mux.api(what, body)
        except JetStreamError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            await self._broker.ensure_stream(self._spec, force=True)
            await self._broker.mux.api(what, body)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker.consumers.discard(self)
        buffered, self._buffer = list(self._buffer), deque()
        self._mine.clear()
        if self._ledger is not None:
            self._ledger.forget()
        self._wake.set()
        nc = self._broker.connection
        if nc is None or not nc.is_connected:
            return
        with contextlib.suppress(*UNAVAILABLE):
            for msg in buffered:  # never handed out: give them back at once
                await nc.publish(msg.reply, _NAK)
            if self._sub is not None:
                await self._sub.unsubscribe()

    def reset(self) -> None:
        """After a reconnect: the open pull request died with the old connection."""
        self._live = 0
        self._verify_at = 0.0
        self._wake.set()

    # pulling ---------------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply:  # a delivery ($JS.ACK...)
            self._buffer.append(msg)
            if self._live:
                self._live -= 1
        else:
            code = status(msg)
            if code == "100":  # idle heartbeat: not requested, ignore
                return
            self._live = 0  # 404 no messages / 408 expired / 409 refused: request over
            if code == "409":
                self._pause_until = asyncio.get_running_loop().time() + _REFUSED_PAUSE_S
                if "deleted" in str((msg.headers or {}).get("Description", "")).lower():
                    self._verify_at = 0.0
        self._wake.set()

    async def fetch(self, max_messages: int, timeout: float) -> list[Delivery]:
        async with self._lock:
            limit = min(max_messages, self.max_outstanding - len(self._mine))
            if limit <= 0 or self._closed:
                return []
            self._broker.check()
            if not self._buffer:
                await self._pull(limit, timeout)
            if not self._buffer:
                await self._verify_if_due()
            return self._hand_out(limit)

    async def _pull(self, limit: int, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        no_wait = True
        while not self._closed:
            now = loop.time()
            if self._live and now >= self._live_until:
                # Its end never came: a pull on a consumer the server lost goes unanswered
                # on 2.9, so look for that before the next request.
                self._live = 0
                self._verify_at = 0.0
                return
            if not self._live and not self._buffer and now >= self._pause_until:
                if not no_wait and deadline - now < 0.005:
                    return
                await self._request(limit, None if no_wait else deadline - now)
                no_wait = False
            self._wake.clear()
            if self._buffer and not (self._live and self._live_no_wait):
                return  # a lingering pull returns on the first arrival, no_wait when done
            if len(self._buffer) >= limit or loop.time() >= deadline:
                return
            wake_at = min(deadline, max(self._live_until, self._pause_until))
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel.
                async with asyncio.timeout(max(wake_at - loop.time(), 0.0)):
                    await self._wake.wait()

    async def _request(self, batch: int, expires: float | None) -> None:
        now = asyncio.get_running_loop().time()
        if expires is None:  # answered at once by a live consumer
            payload = b'{"batch":%d,"no_wait":true}' % batch
            self._live_until = now + _NO_WAIT_ANSWER_S
        else:
            # Expire just before our own deadline, so the 408 closes it while we still wait.
            ns = int(max(expires - 0.01, 0.001) * 1e9)
            payload = b'{"batch":%d,"expires":%d}' % (batch, ns)
            self._live_until = now + expires + 1.0
        self._live, self._live_no_wait = batch, expires is None
        try:
            await self._broker.send(self._next, payload, self._inbox)
        except BrokerUnavailable:
            self._live = 0
            raise

    def _hand_out(self, limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        buffer, mine = self._buffer, self._mine
        while buffer and len(out) < limit:
            msg = buffer.popleft()
            delivered, seq, _ = ack_fields(msg.reply)
            held = mine.get(seq)
            if held is not None:  # redelivered while still held here: keep one, newest reply
                held.reply, held.delivery_count = msg.reply, delivered
                continue
            d = mine[seq] = NatsDelivery(msg, delivered, seq)
            out.append(d)
        return out

    async def _verify_if_due(self) -> None:
        """While idle, check now and then that the consumer still exists (a server that
        lost its state, or an operator's delete, would otherwise just look like silence:
        JetStream 2.9 does not answer pulls on a missing consumer)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._verify_at or self._closed:
            return
        self._verify_at = loop.time() + _VERIFY_EVERY_S
        try:
            await self._broker.mux.api(f"CONSUMER.INFO.{self._spec.name}.{self._durable}")
        except JetStreamError as exc:
            if exc.err_code not in MISSING:
                raise
            await self._create_consumer()
            self._live = 0  # requests sent to the lost consumer will never be answered

    # settling --------------------------------------------------------------------------

    async def complete(
        self,
        delivery: Delivery,
        publish: Sequence[Outbound] = (),
        remember: Remember | None = None,
    ) -> None:
        broker = self._broker
        broker.check()
        assert isinstance(delivery, NatsDelivery)
        if remember is not None:
            # The stored result and the published one travel together: the ledger write
            # is issued first, both are awaited before the ack. Should the write then
            # fail, the task is run again and the caller drops the second result.
            sent = functools.partial(broker.publish, publish) if publish else None
            await self._require_ledger().remember(remember, alongside=sent)
        elif publish:
            await broker.publish(publish)
        await broker.send(delivery.reply, _ACK)
        self._mine.pop(delivery.seq, None)

    async def extend(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        broker = self._broker
        broker.check()
        for d in deliveries:
            assert isinstance(d, NatsDelivery)
            if d.seq in self._mine:
                await broker.send(d.reply, _PROGRESS)
        for msg in self._buffer:
            await broker.send(msg.reply, _PROGRESS)
        if task_ids:
            await self._require_ledger().renew(task_ids)

    async def release(self, deliveries: Sequence[Delivery], task_ids: Sequence[str] = ()) -> None:
        broker = self._broker
        # Let go first: if the naks cannot be sent (server away) JetStream redelivers
        # after ack_wait, and a consumer still counting them as held would stay full.
        held = []
        for d in deliveries:
            assert isinstance(d, NatsDelivery)
            if self._mine.pop(d.seq, None) is not None:
                held.append(d)
        broker.check()
        for d in held:
            await broker.send(d.reply, _NAK)
        if task_ids:
            await self._require_ledger().drop(task_ids)

    async def claim(self, task_ids: Sequence[str]) -> list[Claim]:
        self._broker.check()
        return await self._require_ledger().claim(task_ids)

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("call start() before using the consumer")
        return self._ledger


class NatsSubscription(Subscription):
    """An ordered push consumer (ephemeral, deliver-new) created before ``subscribe``
    returns; nats-py recreates it from the last sequence after gaps or missed heartbeats.

    A server restart drops ephemeral consumers, and nats-py would only notice after three
    missed idle heartbeats (~15 s); so on reconnect the consumer is recreated at once,
    from the sequence after the last message seen (or from when the subscription opened),
    and nothing published meanwhile is skipped.
    """

    def __init__(self, broker: NatsBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic
        self._buffer: deque[Msg] = deque()
        self._wake = asyncio.Event()
        self._psub: Any = None
        self._closed = False
        self._js: JetStreamContext | None = None
        self._stream = ""
        self._opened_at = 0
        self._last_seq = 0

    async def open(self, js: JetStreamContext, stream: str) -> None:
        self._js, self._stream = js, stream
        self._opened_at = int(time.time() * 1000)
        await self._subscribe(deliver_policy=DeliverPolicy.NEW)

    async def _subscribe(self, **start: Any) -> None:
        assert self._js is not None
        try:
            self._psub = await self._js.subscribe(
                self._topic, stream=self._stream, cb=self._on_msg, ordered_consumer=True, **start
            )
        except (nats.errors.TimeoutError, *UNAVAILABLE) as exc:
            raise BrokerUnavailable(f"cannot subscribe to {self._topic}: {exc}") from exc

    async def reopen(self) -> None:
        """Recreate the consumer after a reconnect, resuming where delivery stopped."""
        old, self._psub = self._psub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        if self._last_seq:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._last_seq + 1
            )
        else:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.datetime.fromtimestamp(
                    self._opened_at / 1000, tz=datetime.UTC
                ),
            )
        start = {"config": config}
        delay = 0.1
        while not self._closed:
            try:  # JetStream may still be recovering its streams right after a restart
                await self._subscribe(**start)
                return
            except (BrokerUnavailable, nats.errors.Error, nats.js.errors.Error):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _on_msg(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):  # a reply subject without metadata: keep going
            self._last_seq = msg.metadata.sequence.stream
        self._buffer.append(msg)
        self._wake.set()

    async def get(self, timeout: float) -> list[Message]:
        if not self._buffer and not self._closed:
            self._broker.check()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # cancel-safe, unlike 3.11's wait_for
                    await self._wake.wait()
        out = [_message(m) for m in self._buffer]
        self._buffer.clear()
        return out

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker.subscriptions.discard(self)
        self._wake.set()
        if self._psub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._psub.unsubscribe()


def _servers(url: str) -> list[str]:
    """``nats://u:p@h1:4222,h2:4222`` -> one URL per server; a bare ``host:port`` after a
    comma shares the first one's scheme and user info (``tls://a,tls://b`` works too)."""
    first, *others = (part.strip() for part in url.split(","))
    scheme, _, rest = first.partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    out = [first]
    out += (p if "://" in p else f"{scheme}://{userinfo}{at}{p}" for p in others if p)
    if not rest.strip("/"):
        raise ConfigurationError(f"NATS URL {redact(url)!r} names no server")
    return out


def _rfc3339(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe(exc: BaseException) -> str:
    text = str(exc).removeprefix("nats: ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsBroker(Broker):
    """NATS JetStream adapter; see the module docstring for the layout.

    Options: ``storage`` (``"file"`` or ``"memory"``), ``stream_replicas``,
    ``replies_max_age`` / ``heartbeats_max_age`` / ``dead_max_age`` / ``ledger_max_age``
    (seconds, 0 = unlimited), ``max_ack_pending`` (fleet-wide per agent; per-member bounds
    come from ``max_outstanding``), ``request_timeout``, ``connect_timeout``,
    ``reconnect_time_wait``, ``max_reconnect_attempts`` (-1 = forever once connected).
    Any other keyword goes to FastStream's ``NatsBroker`` (``user_credentials``, ``tls``,
    ``name``, ...).
    """

    scheme = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        storage: str = "file",
        stream_replicas: int = 1,
        replies_max_age: float = 3600.0,
        heartbeats_max_age: float = 600.0,
        dead_max_age: float = 0.0,
        ledger_max_age: float = 7 * 86400.0,
        max_ack_pending: int = 65_536,
        request_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        reconnect_time_wait: float = 2.0,
        max_reconnect_attempts: int = -1,
        **connection_options: Any,
    ) -> None:
        super().__init__(url)
        self._servers = _servers(url)
        _validate(storage, stream_replicas, max_ack_pending, request_timeout, connect_timeout)
        ages = (replies_max_age, heartbeats_max_age, dead_max_age, ledger_max_age)
        if any(a < 0 for a in ages):
            raise ConfigurationError("max_age options must be >= 0 seconds (0 = unlimited)")
        self.layout = Layout(
            storage, stream_replicas, replies_max_age, heartbeats_max_age, dead_max_age
        )
        self._ledger_spec = bucket_spec(ledger_max_age, storage, stream_replicas)
        self._presence_spec = presence.spec(storage, stream_replicas)
        self.max_ack_pending = max_ack_pending
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_time_wait = reconnect_time_wait
        self._max_reconnect_attempts = max_reconnect_attempts
        self._options = connection_options
        self._faststream_broker()  # unknown options fail here, not at connect time
        self._fs: FastStreamNats | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._mux: ReplyMux | None = None
        self._kv: KvBucket | None = None
        self._ensured: set[str] = set()
        self._last_error: BaseException | None = None
        self._connect_lock = asyncio.Lock()
        self.consumers: set[NatsTaskConsumer] = set()
        self.subscriptions: set[NatsSubscription] = set()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def display_url(self) -> str:
        return ",".join(redact(s) for s in self._servers)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "storage": self.layout.storage}

    # connection ----------------------------------------------------------------------

    def _faststream_broker(self) -> FastStreamNats:
        try:
            return FastStreamNats(
                self._servers,
                logger=None,  # murmur logs; FastStream and nats-py stay quiet
                connect_timeout=self._connect_timeout,  # type: ignore[arg-type]
                allow_reconnect=True,
                # A first connect tries each server twice, quickly, then fails; the
                # reconnect policy proper is set once connected (see connect()).
                max_reconnect_attempts=1,
                reconnect_time_wait=0.05,  # type: ignore[arg-type]
                error_cb=self._on_error,
                reconnected_cb=self._on_reconnected,
                **self._options,
            )
        except TypeError as exc:
            raise ConfigurationError(f"invalid NATS broker option: {exc}") from None

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc

    async def _on_reconnected(self) -> None:
        self._ensured.clear()  # the server may have come back without its streams
        for consumer in self.consumers:
            consumer.reset()
        for sub in list(self.subscriptions):
            task = asyncio.get_running_loop().create_task(sub.reopen())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @property
    def connection(self) -> Client | None:
        return self._nc

    @property
    def mux(self) -> ReplyMux:
        if self._mux is None:
            raise BrokerUnavailable(f"not connected to NATS at {self.display_url}")
        return self._mux

    def check(self) -> Client:
        """The live connection, or :class:`BrokerUnavailable` (also while reconnecting)."""
        nc = self._nc
        if nc is None or not nc.is_connected:
            state = "not connected" if nc is None else "disconnected (reconnecting)"
            raise BrokerUnavailable(f"NATS at {self.display_url} is {state}")
        return nc

    async def connect(self) -> None:
        async with self._connect_lock:
            if self._nc is None or self._nc.is_closed:
                await self._connect()

    async def _connect(self) -> None:
        fs = self._faststream_broker()
        self._last_error = None
        try:
            nc = await fs.connect()
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            cause = self._last_error or exc
            reason = _describe(cause)
            if isinstance(cause, TimeoutError):
                reason = f"no answer within {self._connect_timeout:g}s ({reason})"
            raise BrokerUnavailable(
                f"cannot connect to NATS at {self.display_url}: {reason}"
            ) from None
        nc.options["max_reconnect_attempts"] = self._max_reconnect_attempts
        nc.options["reconnect_time_wait"] = self._reconnect_time_wait
        self._fs, self._nc = fs, nc
        self._js = fs.config.connection_state.stream
        self._mux = ReplyMux(nc, self._request_timeout)
        try:
            await self._mux.start()
            await self._mux.api("INFO")  # JetStream enabled for this account?
            for spec in self.layout.shared():
                await self.ensure_stream(spec)
        except BrokerUnavailable as exc:
            await self.close()
            raise BrokerUnavailable(f"NATS at {self.display_url}: {exc}") from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        for consumer in list(self.consumers):
            await consumer.close()
        for sub in list(self.subscriptions):
            await sub.close()
        mux, fs, nc = self._mux, self._fs, self._nc
        self._mux = self._fs = self._nc = self._js = self._kv = None
        self._ensured.clear()
        if mux is not None:
            await mux.stop()
        if fs is None or nc is None:
            return
        try:  # drain flushes buffered acks; a dead server must not hang close()
            await asyncio.wait_for(fs.stop(), 5.0)
        except Exception:
            with contextlib.suppress(Exception):
                await nc.close()

    async def ping(self, timeout: float = 2.0) -> bool:
        if self._nc is None or not self._nc.is_connected or self._mux is None:
            return False
        try:
            parse_json(await self._mux.request(f"{API}.INFO", timeout=timeout))
        except (BrokerUnavailable, JetStreamError):
            return False
        return True

    async def send(self, subject: str, payload: bytes, reply: str = "") -> None:
        """A fire-and-forget publish (acks, pull requests), as BrokerUnavailable on failure."""
        try:
            await self.check().publish(subject, payload, reply=reply)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"NATS at {self.display_url}: {exc}") from exc

    # streams ---------------------------------------------------------------------------

    async def ensure_stream(self, spec: StreamSpec, *, force: bool = False) -> None:
        """Create ``spec``'s stream, or bring an existing one to murmur's settings."""
        if spec.name in self._ensured and not force:
            return
        try:
            await self.mux.api(f"STREAM.CREATE.{spec.name}", spec.as_config())
        except JetStreamError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise ConfigurationError(
                    f"cannot create JetStream stream {spec.name} for {', '.join(spec.subjects)}: "
                    f"{exc.description}"
                ) from exc
            await self._reconcile(spec)
        self._ensured.add(spec.name)

    async def _reconcile(self, spec: StreamSpec) -> None:
        current = (await self.mux.api(f"STREAM.INFO.{spec.name}"))["config"]
        if not spec.differs_from(current):
            return
        try:
            await self.mux.api(f"STREAM.UPDATE.{spec.name}", {**current, **spec.as_config()})
        except JetStreamError as exc:
            raise ConfigurationError(
                f"JetStream stream {spec.name} exists with settings murmur cannot change "
                f"({exc.description}); delete it or align the broker options"
            ) from exc

    async def kv(self) -> KvBucket:
        if self._kv is None or self._ledger_spec.name not in self._ensured:
            await self.ensure_stream(self._ledger_spec)
            self._kv = KvBucket(self.mux)
        return self._kv

    async def ensure_task_topic(self, agent: str) -> None:
        topics.validate_agent_name(agent)
        self.check()
        await self.ensure_stream(self.layout.tasks(agent))

    # publishing ------------------------------------------------------------------------

    async def publish(self, messages: Sequence[Outbound]) -> None:
        """Issue every publish, then await all PubAcks under one timer (order is kept:
        one connection, issued in order). A stream the server lacks is created, once."""
        self.check()
        missing = await self._publish(messages)
        if missing:
            for spec in {self.layout.for_topic(m.topic) for m in missing}:
                await self.ensure_stream(spec, force=True)
            if await self._publish(missing):
                raise BrokerUnavailable(
                    f"NATS at {self.display_url}: no stream answers for {missing[0].topic}"
                )

    async def _publish(self, messages: Sequence[Outbound]) -> list[Outbound]:
        mux = self.mux
        futs = [await mux.send(m.topic, m.body, m.headers or None) for m in messages]
        missing: list[Outbound] = []
        for m, reply in zip(messages, await mux.wait(futs), strict=True):
            if b'"error"' in reply.data:
                parse_json(reply)  # raises JetStreamError
            elif not reply.data and status(reply) == "503":
                missing.append(m)
        return missing

    # consuming -------------------------------------------------------------------------

    def task_consumer(
        self,
        agent: str,
        *,
        consumer_id: str,
        reclaim_min_idle_ms: int | None,
        max_outstanding: int,
        max_deliveries: int | None = None,
    ) -> NatsTaskConsumer:
        return NatsTaskConsumer(
            self,
            agent,
            consumer_id=consumer_id,
            reclaim_min_idle_ms=reclaim_min_idle_ms,
            max_outstanding=max_outstanding,
        )

    async def subscribe(self, topic: str) -> Subscription:
        self.check()
        spec = self.layout.for_topic(topic)
        if spec.retention == "workqueue":
            raise ConfigurationError(f"cannot subscribe to {topic}: tasks go to the group only")
        await self.ensure_stream(spec)
        assert self._js is not None
        sub = NatsSubscription(self, topic)
        await sub.open(self._js, spec.name)
        self.subscriptions.add(sub)
        return sub

    # inspection and repair -------------------------------------------------------------

    async def read(
        self, topic: str, *, since_ms: int | None = None, limit: int = 1000
    ) -> list[Message]:
        self.check()
        spec = self.layout.for_topic(topic)
        if limit <= 0:
            return []
        try:
            if spec.retention == "workqueue":  # no second consumer allowed: walk by get
                return await self._read_by_get(spec.name, topic, since_ms, limit)
            return await self._read_by_consumer(spec.name, topic, since_ms, limit)
        except JetStreamError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return []
            raise

    async def _read_by_consumer(
        self, stream: str, topic: str, since_ms: int | None, limit: int
    ) -> list[Message]:
        """An ephemeral pull consumer (2.9 requires explicit acks for pull; nothing is
        acked and it is deleted right after) and one ``no_wait`` pull for ``limit``."""
        config: dict[str, Any] = {
            "ack_policy": "explicit",
            "ack_wait": int(3600e9),
            "max_deliver": 1,
            "max_ack_pending": limit,
            "filter_subject": topic,
            "inactive_threshold": int(60e9),
            "mem_storage": True,
            "num_replicas": 1,
            "deliver_policy": "all",
        }
        if since_ms is not None:
            config["deliver_policy"] = "by_start_time"
            config["opt_start_time"] = _rfc3339(since_ms)
        info = await self.mux.api(
            f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config}
        )
        name = info["name"]
        try:
            if not info.get("num_pending"):
                return []
            pull = f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}"
            msgs = await self._collect(pull, b'{"batch":%d,"no_wait":true}' % limit, limit)
        finally:
            with contextlib.suppress(BrokerUnavailable, JetStreamError):
                await self.mux.api(f"CONSUMER.DELETE.{stream}.{name}")
        return [_message(m) for m in msgs]

    async def _collect(self, subject: str, request: bytes, limit: int) -> list[Msg]:
        """Send one pull ``request`` and gather deliveries until it ends or ``limit``."""
        nc = self.check()
        got: list[Msg] = []
        done = asyncio.Event()

        async def on_msg(msg: Msg) -> None:
            if msg.reply:
                got.append(msg)
            if not msg.reply or len(got) >= limit:
                done.set()

        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=on_msg)
        try:
            await self.send(subject, request, inbox)
            try:
                await asyncio.wait_for(done.wait(), self._request_timeout)
            except TimeoutError:
                if not got:
                    raise BrokerUnavailable(f"NATS at {self.display_url}: read timed out") from None
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        return got[:limit]

    async def _read_by_get(
        self, stream: str, topic: str, since_ms: int | None, limit: int
    ) -> list[Message]:
        out: list[Message] = []
        seq = 1
        while len(out) < limit:
            try:
                found = await self.mux.api(
                    f"STREAM.MSG.GET.{stream}", {"seq": seq, "next_by_subj": topic}
                )
            except JetStreamError as exc:
                if exc.err_code == NO_MESSAGE_FOUND:
                    break
                raise
            m = _stored_message(found["message"])
            seq = int(m.id) + 1
            if since_ms is None or m.timestamp_ms >= since_ms:
                out.append(m)
        return out

    async def delete(self, topic: str, ids: Sequence[str]) -> int:
        self.check()
        spec = self.layout.for_topic(topic)
        seqs = [int(i) for i in ids if i.isdigit()]
        if len(spec.subjects) > 1:  # a shared stream: only delete what is really on topic
            seqs = await self._on_topic(spec.name, topic, seqs)
        return sum(await asyncio.gather(*(self._delete_one(spec.name, s) for s in seqs)))

    async def _on_topic(self, stream: str, topic: str, seqs: list[int]) -> list[int]:
        async def subject_of(seq: int) -> str | None:
            try:
                found = await self.mux.api(f"STREAM.MSG.GET.{stream}", {"seq": seq})
            except JetStreamError:
                return None
            subject: str = found["message"]["subject"]
            return subject

        subjects = await asyncio.gather(*(subject_of(s) for s in seqs))
        return [s for s, subj in zip(seqs, subjects, strict=True) if subj == topic]

    async def _delete_one(self, stream: str, seq: int) -> int:
        try:
            await self.mux.api(f"STREAM.MSG.DELETE.{stream}", {"seq": seq, "no_erase": True})
        except JetStreamError:
            return 0  # already gone
        return 1

    async def purge(self, topic: str) -> int:
        self.check()
        spec = self.layout.for_topic(topic)
        try:
            resp = await self.mux.api(f"STREAM.PURGE.{spec.name}", {"filter": topic})
        except JetStreamError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return 0
            raise
        purged: int = resp.get("purged", 0)
        return purged

    async def queue_stats(self, agent: str) -> QueueStats:
        topics.validate_agent_name(agent)
        self.check()
        tasks = self.layout.tasks(agent)
        durable = topics.group_name(agent).replace(".", "_")
        try:
            info = await self.mux.api(f"CONSUMER.INFO.{tasks.name}.{durable}")
            depth, pending = int(info["num_pending"]), int(info["num_ack_pending"])
        except JetStreamError as exc:
            if exc.err_code not in MISSING:
                raise
            depth, pending = await self._stored(tasks.name), 0
        dead = await self._stored(self.layout.dead(agent).name)
        return QueueStats(agent, depth, pending, dead, None)

    async def _stored(self, stream: str) -> int:
        """Messages in a single-subject stream (0 when it does not exist)."""
        try:
            info = await self.mux.api(f"STREAM.INFO.{stream}")
        except JetStreamError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return 0
            raise
        return int(info["state"]["messages"])

    # presence ------------------------------------------------------------------------
    # Raw JetStream API calls over the shared mux: FastStream's KV wrapper would cost a
    # nats-py KeyValue object and its JSON round trips per call, and has no listing that
    # filters on our expiry header.

    async def put_presence(self, worker_id: str, record: bytes, ttl_ms: int) -> None:
        self.check()
        await self.ensure_stream(self._presence_spec)
        headers = {presence.TTL_HEADER: str(max(1, int(ttl_ms)))}
        reply = await self.mux.request(presence.subject(worker_id), record, headers)
        if not reply.data and status(reply) == "503":  # the server lost the bucket
            await self.ensure_stream(self._presence_spec, force=True)
            reply = await self.mux.request(presence.subject(worker_id), record, headers)
        parse_json(reply)

    async def drop_presence(self, worker_id: str) -> None:
        self.check()
        reply = await self.mux.request(presence.subject(worker_id), b"", presence.DELETE)
        if reply.data or status(reply) != "503":  # 503: no bucket, so nothing to drop
            parse_json(reply)

    async def list_presence(self) -> list[bytes]:
        """Newest message per key through an ephemeral ``last_per_subject`` consumer."""
        self.check()
        stream = self._presence_spec.name
        try:
            info = await self.mux.api(
                f"CONSUMER.CREATE.{stream}",
                {"stream_name": stream, "config": presence.listing_consumer()},
            )
        except JetStreamError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return []  # no worker ever announced itself here
            raise
        name, pending = info["name"], int(info.get("num_pending") or 0)
        # The server's clock, so expiry is judged on one clock (see _nats_presence).
        server_now = _ms(info.get("created", "")) or int(time.time() * 1000)
        try:
            if not pending:
                return []
            pull = f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}"
            msgs = await self._collect(pull, b'{"batch":%d,"no_wait":true}' % pending, pending)
        finally:
            with contextlib.suppress(BrokerUnavailable, JetStreamError):
                await self.mux.api(f"CONSUMER.DELETE.{stream}.{name}")
        return presence.live_records(msgs, server_now)


def _validate(
    storage: str, replicas: int, max_ack_pending: int, request_timeout: float, connect: float
) -> None:
    if storage not in ("file", "memory"):
        raise ConfigurationError(f"storage must be 'file' or 'memory', not {storage!r}")
    if replicas < 1:
        raise ConfigurationError(f"stream_replicas must be >= 1, not {replicas}")
    if max_ack_pending < 1:
        raise ConfigurationError(f"max_ack_pending must be >= 1, not {max_ack_pending}")
    if request_timeout <= 0 or connect <= 0:
        raise ConfigurationError("request_timeout and connect_timeout must be > 0 seconds")


def _stored_message(raw: Mapping[str, Any]) -> Message:
    """A ``STREAM.MSG.GET`` reply (base64 body and header block) as a :class:`Message`."""
    headers: dict[str, str] = {}
    if raw.get("hdrs"):
        lines = base64.b64decode(raw["hdrs"]).decode().split("\r\n")[1:]
        for line in lines:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip()] = value.strip()
    stamp = raw.get("time", "")
    return Message(base64.b64decode(raw.get("data") or b""), headers, str(raw["seq"]), _ms(stamp))


def _ms(stamp: str) -> int:
    """RFC 3339 with nanoseconds (Go's format) -> unix ms; 0 if unparseable."""
    try:
        head, _, frac = stamp.rstrip("Z").partition(".")
        moment = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.UTC)
        return int(moment.timestamp()) * 1000 + int((frac + "000")[:3])
    except ValueError:
        return 0
