"""Write coalescing for the Redis adapter: the main throughput lever of the hot path.

Every ``complete()`` and ``publish()`` becomes a :class:`Write`. Writes submitted while a
flush is in flight (or in the same event-loop tick) go out together as one call of the
``_redis_scripts.WRITE`` Lua script: one round trip, atomic like MULTI/EXEC, with the
acknowledgements batched into one ``XACK`` per stream and a reply that lists only the
failures. A busy worker pays one round trip per batch instead of three per task, and an
idle one adds no latency (the first write flushes on the next loop iteration, no timer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.exceptions as rex

from murmur.brokers._redis_wire import bulk
from murmur.brokers.base import Outbound
from murmur.messages import topics

# Per topic: the packed head of its XADD op (``X topic maxlen``; maxlen 0 = no cap) and the
# PEXPIRE that goes with its XADDs (ms, 0: none).
TopicPolicy = tuple[bytes, int]

_ACK_CHUNK = 1000  # ids per XACK op (Lua's unpack() takes at most ~8000 values)
_MAX_BATCH = 1000  # writes per script call: bounds how long one call blocks the server

# Packed op codes and constant fields of the WRITE script's ARGV.
_W, _X, _S, _D, _E, _A = (bulk(op) for op in (b"W", b"X", b"S", b"D", b"E", b"A"))
_BODY = bulk(b"body")
_SMALL = [bulk(b"%d" % n) for n in range(128)]
_CRLF = b"\r\n"


class Write:
    """One caller's share of a batch: ledger write, then publishes, then acknowledgement."""

    __slots__ = ("ack_id", "ack_stream", "ledger", "messages")

    def __init__(
        self,
        messages: Sequence[Outbound],
        ack_stream: str | None = None,
        ack_id: bytes | None = None,
        ledger: tuple[str, bytes, int] | None = None,
    ) -> None:
        self.messages = messages
        self.ack_stream = ack_stream  # task stream == group name (DESIGN §3)
        self.ack_id = ack_id
        self.ledger = ledger  # (key, value, ttl ms); ttl <= 0 deletes the key


class TopicPolicies:
    """How each topic is capped: task streams are never length-capped (they are trimmed
    by acknowledgement, see ``_redis_scripts.TRIM``); results and events are capped and
    expire so abandoned clients' streams vanish; dead letters and the rest are capped."""

    def __init__(
        self, *, results_maxlen: int, results_ttl_ms: int, dead_maxlen: int, stream_maxlen: int
    ) -> None:
        self._results = (results_maxlen, results_ttl_ms)
        self._dead = (dead_maxlen, 0)
        self._other = (stream_maxlen, 0)
        self._cache: dict[str, TopicPolicy] = {}

    def __call__(self, topic: str) -> TopicPolicy:
        policy = self._cache.get(topic)
        if policy is None:
            if len(self._cache) >= 10_000:  # one entry per client id: do not grow forever
                self._cache.clear()
            maxlen, ttl = self._limits(topic)
            head = _X + bulk(topic.encode()) + bulk(b"%d" % maxlen)
            policy = self._cache[topic] = (head, ttl)
        return policy

    def _limits(self, topic: str) -> tuple[int, int]:
        if topic.startswith(("murmur.results.", "murmur.events.")):
            return self._results
        kind = topics.agent_of_topic(topic) and topic.rpartition(".")[2]
        if kind == "tasks":
            return (0, 0)
        return self._dead if kind == "dead" else self._other


Batch = list[tuple[asyncio.Future[None], Write]]


class WriteBatcher:
    """Coalesces concurrent writes into single script calls (see the module docstring).

    ``run`` executes the WRITE script with packed ARGV (bulk strings, count) and returns
    its reply; ``translate`` maps a transport error to the exception callers should see.
    """

    def __init__(
        self,
        run: Callable[[list[bytes], int], Awaitable[Any]],
        policies: TopicPolicies,
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        self._run_script = run
        self._policies = policies
        self._translate = translate
        self._queue: Batch = []
        self._flusher: asyncio.Task[None] | None = None
        self.round_trips = 0  # for tests and benchmarks

    def submit(self, write: Write) -> asyncio.Future[None]:
        """Queue ``write``; the future resolves once the broker stored it (or fails)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((future, write))
        if self._flusher is None:
            self._flusher = loop.create_task(self._run())
        return future

    async def drain(self) -> None:
        """Wait until everything submitted so far has been flushed."""
        while self._flusher is not None:
            await asyncio.shield(self._flusher)

    async def _run(self) -> None:
        batch: Batch = []
        try:
            while self._queue:
                batch = self._queue[:_MAX_BATCH]
                del self._queue[:_MAX_BATCH]
                await self._flush(batch)
        except BaseException as exc:  # cancelled (broker closing) or a bug: fail, never hang
            _fail(batch + self._queue, self._translate(exc))
            self._queue = []
            raise
        finally:
            self._flusher = None

    async def _flush(self, batch: Batch) -> None:
        """One script call for ``batch``; per write the order is the at-least-once order
        (ledger, publishes, then the acknowledgement, batched at the end of the call)."""
        staged: Batch = []
        packed: list[bytes] = []
        nargs = 0
        acks: dict[str, list[bytes]] = {}
        expiring: dict[str, int] = {}
        for future, write in batch:
            try:
                nargs += self._pack_write(write, packed, expiring)
            except Exception as exc:  # e.g. a non-str header: fails only this caller
                if not future.done():
                    error = TypeError(f"cannot send this message to redis: {exc!r}")
                    error.__cause__ = exc
                    future.set_exception(error)
                continue
            staged.append((future, write))
            if write.ack_stream is not None and write.ack_id is not None:
                acks.setdefault(write.ack_stream, []).append(write.ack_id)
        if not staged:
            return
        nargs, acked = _pack_tail(packed, nargs, expiring, acks)
        try:
            self.round_trips += 1
            failures = await self._run_script(packed, nargs)
        except Exception as exc:
            _fail(staged, self._translate(exc))
            return
        _resolve(staged, failures, acked)

    def _pack_write(self, write: Write, out: list[bytes], expiring: dict[str, int]) -> int:
        """Append the packed ops of one write (see ``scripts.WRITE``); returns their count.

        Arguments are packed here directly, constant parts cached per topic: this runs
        once per message and is most of the write path's CPU. A write that fails to pack
        leaves ``out`` as it was.
        """
        part = [_W]
        add = part.append
        n = 1
        if write.ledger is not None:
            key, value, ttl = write.ledger
            if ttl > 0:
                add(_S + bulk(key.encode()) + bulk(value) + bulk(b"%d" % ttl))
                n += 4
            else:
                add(_D + bulk(key.encode()))
                n += 2
        for m in write.messages:
            head, ttl = self._policies(m.topic)
            headers, body = m.headers, m.body
            fields = 2 + 2 * len(headers)
            add(head)
            add(_SMALL[fields] if fields < 128 else bulk(b"%d" % fields))
            add(_BODY)
            add(b"$%d\r\n" % len(body))
            add(body)
            add(_CRLF)
            for name, val in headers.items():
                k, v = name.encode(), val.encode()
                add(b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(k), k, len(v), v))
            n += 4 + fields  # X, topic, maxlen, field count, then the fields
            if ttl:
                expiring[m.topic] = ttl
        out += part
        return n


def _pack_tail(
    out: list[bytes], nargs: int, expiring: dict[str, int], acks: dict[str, list[bytes]]
) -> tuple[int, list[str]]:
    """Append the batch-wide ops (PEXPIREs, then XACKs); returns the new argument count
    and the stream of each XACK op, in order (failures name them by position)."""
    for topic, ttl in expiring.items():
        out.append(_E + bulk(topic.encode()) + bulk(b"%d" % ttl))
        nargs += 3
    acked: list[str] = []
    for stream, ids in acks.items():
        for i in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[i : i + _ACK_CHUNK]
            out.append(_A + bulk(stream.encode()) + bulk(b"%d" % len(chunk)))
            out += [bulk(entry_id) for entry_id in chunk]
            nargs += 3 + len(chunk)
            acked.append(stream)
    return nargs, acked


def _resolve(batch: Batch, failures: list[list[Any]], acked: list[str]) -> None:
    """Settle every caller's future from the script's list of failures."""
    errors: dict[int, Exception] = {}
    for who, message in failures:
        error = rex.ResponseError(message.decode("utf-8", "replace"))
        if who > 0:
            errors.setdefault(who - 1, error)
        else:  # an XACK failed: every write it acknowledged failed
            stream = acked[-who - 1]
            for n, (_, write) in enumerate(batch):
                if write.ack_stream == stream:
                    errors.setdefault(n, error)
    for n, (future, _) in enumerate(batch):
        if not future.done():
            if n in errors:
                future.set_exception(errors[n])
            else:
                future.set_result(None)


def _fail(batch: Batch, error: BaseException) -> None:
    for future, _ in batch:
        if not future.done():
            future.set_exception(error)
