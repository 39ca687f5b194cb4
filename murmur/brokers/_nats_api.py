"""Low-level JetStream plumbing for the NATS adapter: request multiplexing, API errors,
ack-subject parsing and the stream layout.

Kept apart from :mod:`murmur.brokers.nats` so the adapter reads as broker semantics while
this module holds the wire details (subjects, status codes, JSON shapes) of JetStream
2.9+.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from murmur.errors import BrokerUnavailable, ConfigurationError, MurmurError
from murmur.messages import topics

API: Final = "$JS.API"

# JetStream API error codes this adapter reacts to (nats-server errors.json).
CONSUMER_NOT_FOUND: Final = 10014
NO_MESSAGE_FOUND: Final = 10037
STREAM_NAME_IN_USE: Final = 10058
STREAM_NOT_FOUND: Final = 10059
WRONG_LAST_SEQUENCE: Final = 10071
MISSING: Final = frozenset({CONSUMER_NOT_FOUND, STREAM_NOT_FOUND})

# Connection states in which nats-py refuses or cannot complete a call: the broker is away.
UNAVAILABLE: Final = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.StaleConnectionError,
)

_decode = msgspec.json.Decoder().decode
encode_json = msgspec.json.Encoder().encode


class JetStreamError(MurmurError):
    """JetStream refused a request (a config conflict, a rejected publish...)."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"JetStream error {err_code} ({code}): {description}")
        self.code = code
        self.err_code = err_code
        self.description = description


def status(msg: Msg) -> str | None:
    """The status code of a server status message (``404``, ``408``, ``503``...), else None.

    Status messages carry no reply subject and no payload; a JetStream delivery always has a
    ``$JS.ACK...`` reply, so a task with an empty body is never mistaken for one.
    """
    if msg.reply or msg.data or not msg.headers:
        return None
    return msg.headers.get("Status")


def parse_json(msg: Msg) -> dict[str, Any]:
    """Decode a JetStream API reply, raising :class:`JetStreamError` for an error reply."""
    if status(msg) == "503":
        raise BrokerUnavailable("JetStream did not answer (no responders): is it enabled?")
    resp: dict[str, Any] = _decode(msg.data)
    err = resp.get("error")
    if err is not None:
        raise JetStreamError(err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
    return resp


def ack_fields(reply: str) -> tuple[int, int, int]:
    """``(num_delivered, stream_seq, timestamp_ns)`` from a ``$JS.ACK`` reply subject.

    v1: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``;
    v2 (2.10+ with domains) inserts ``<domain>.<account>`` after ``ACK`` and may append
    tokens, so v2 fields are counted from the front after those two.
    """
    t = reply.split(".")
    if len(t) == 9:
        return int(t[4]), int(t[5]), int(t[7])
    return int(t[6]), int(t[7]), int(t[9])


# ---------------------------------------------------------------------------- requests


class ReplyMux:
    """Many in-flight requests over one wildcard inbox subscription.

    nats-py's ``request()`` costs an ``asyncio.wait_for`` per call and ``js.publish`` a
    JSON decode into a dataclass; here a request is one ``PUB`` plus a future. Instead of
    a timer per request, a sweeper fails whatever is still unanswered after one to two
    ``timeout`` periods (two generations of pending requests). Publishes leave in call
    order on one connection, so issuing a batch before awaiting it keeps per-subject order.
    """

    def __init__(self, nc: Client, timeout: float) -> None:
        self._nc = nc
        self.timeout = timeout
        self._prefix = nc.new_inbox() + "."
        self._cut = len(self._prefix)
        self._new: dict[str, asyncio.Future[Msg]] = {}
        self._old: dict[str, asyncio.Future[Msg]] = {}
        self._ids = itertools.count(1)
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        self._sweeper = asyncio.create_task(self._sweep(), name="murmur-nats-request-sweeper")

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        for fut in (*self._old.values(), *self._new.values()):
            fut.cancel()
        self._old, self._new = {}, {}

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.timeout)
            expired, self._old, self._new = self._old, self._new, {}
            for fut in expired.values():
                if not fut.done():
                    fut.set_exception(
                        BrokerUnavailable(f"NATS did not answer a request within {self.timeout:g}s")
                    )
                    fut.exception()  # an awaiter still gets it; nobody awaiting is no error

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[self._cut :]
        fut = self._new.pop(token, None) or self._old.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def send(
        self, subject: str, payload: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> asyncio.Future[Msg]:
        """Publish with a reply inbox; the future resolves with the first reply, or fails
        with :class:`BrokerUnavailable` when none comes in time."""
        token = str(next(self._ids))
        fut: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._new[token] = fut
        try:
            await self._nc.publish(
                subject,
                payload,
                reply=self._prefix + token,
                headers=headers,  # type: ignore[arg-type]  # any Mapping works
            )
        except UNAVAILABLE as exc:
            del self._new[token]
            raise BrokerUnavailable(f"NATS connection unavailable: {exc}") from exc
        return fut

    async def wait(
        self, futs: Sequence[asyncio.Future[Msg]], timeout: float | None = None
    ) -> list[Msg]:
        """All replies, in order. ``timeout`` (rarely needed) bounds the wait tighter than
        the sweeper does."""
        if timeout is not None and (pending := [f for f in futs if not f.done()]):
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                raise BrokerUnavailable(f"NATS did not answer within {timeout:g}s")
        return [await f for f in futs]

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Msg:
        fut = await self.send(subject, payload, headers)
        return (await self.wait((fut,), timeout))[0]

    async def api(self, what: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One JetStream API call, e.g. ``api("STREAM.INFO.X")``; errors are raised."""
        payload = encode_json(body) if body is not None else b""
        return parse_json(await self.request(f"{API}.{what}", payload))


# ---------------------------------------------------------------------------- layout


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """The config of one stream murmur manages; ``as_config`` is what the server gets."""

    name: str
    subjects: tuple[str, ...]
    retention: str = "limits"
    max_age_s: float = 0.0
    storage: str = "file"
    replicas: int = 1
    extra: tuple[tuple[str, Any], ...] = ()

    def as_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "name": self.name,
            "subjects": list(self.subjects),
            "retention": self.retention,
            "storage": self.storage,
            "num_replicas": self.replicas,
            "discard": "old",
            "max_age": int(self.max_age_s * 1e9),
        }
        if self.max_age_s:  # the duplicate window may not exceed max_age
            cfg["duplicate_window"] = int(min(120.0, self.max_age_s) * 1e9)
        cfg.update(self.extra)
        return cfg

    def differs_from(self, current: Mapping[str, Any]) -> bool:
        """True when a field murmur sets differs on the server (server defaults ignored)."""
        return any(current.get(k) != v for k, v in self.as_config().items())


TASK_STREAM_PREFIX: Final = "MURMUR_TASKS_"
DEAD_STREAM_PREFIX: Final = "MURMUR_DEAD_"
REPLIES_STREAM: Final = "MURMUR_REPLIES"
HEARTBEATS_STREAM: Final = "MURMUR_HEARTBEATS"


@dataclass(frozen=True, slots=True)
class Layout:
    """Which stream holds which topic, with the operator's retention options.

    Task and dead-letter topics get one stream per agent: a catch-all ``murmur.*.tasks``
    stream would overlap ``murmur.results.>`` (both match ``murmur.results.tasks``) and
    JetStream refuses overlapping streams (error 10065), whatever names murmur reserves.
    """

    storage: str = "file"
    replicas: int = 1
    replies_max_age_s: float = 3600.0
    heartbeats_max_age_s: float = 600.0
    dead_max_age_s: float = 0.0

    def tasks(self, agent: str) -> StreamSpec:
        return StreamSpec(
            TASK_STREAM_PREFIX + agent,
            (topics.task_topic(agent),),
            "workqueue",
            0.0,
            self.storage,
            self.replicas,
        )

    def dead(self, agent: str) -> StreamSpec:
        return StreamSpec(
            DEAD_STREAM_PREFIX + agent,
            (topics.dead_topic(agent),),
            "limits",
            self.dead_max_age_s,
            self.storage,
            self.replicas,
        )

    def replies(self) -> StreamSpec:
        subjects = (topics.results_topic(">"), topics.events_topic(">"))
        return StreamSpec(
            REPLIES_STREAM, subjects, "limits", self.replies_max_age_s, self.storage, self.replicas
        )

    def heartbeats(self) -> StreamSpec:
        return StreamSpec(
            HEARTBEATS_STREAM,
            (topics.HEARTBEATS,),
            "limits",
            self.heartbeats_max_age_s,
            self.storage,
            self.replicas,
        )

    def shared(self) -> Iterable[StreamSpec]:
        return (self.replies(), self.heartbeats())

    def for_topic(self, topic: str) -> StreamSpec:
        """The stream a DESIGN §3 topic lives in; anything else is a configuration error."""
        agent = topics.agent_of_topic(topic)
        if agent is not None and agent not in topics.RESERVED_AGENT_NAMES:
            topics.validate_agent_name(agent)
            return self.tasks(agent) if topic.endswith(".tasks") else self.dead(agent)
        if topic == topics.HEARTBEATS:
            return self.heartbeats()
        parts = topic.split(".")
        if len(parts) == 3 and parts[0] == topics.PREFIX and parts[1] in ("results", "events"):
            topics.validate_name(parts[2], "client id")
            return self.replies()
        raise ConfigurationError(f"{topic!r} is not a murmur topic (see DESIGN §3)")
