"""Bad input never crashes a worker and is never dropped silently or redelivered forever.

Every frame is either answered (a rejected/error result where a reply_to can be read)
or dead-lettered with its reason, the queue ends empty, and the worker keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from murmur import TaskContext, Worker, agent
from murmur.brokers import Broker, Message, Outbound, connect_broker
from murmur.messages import ResultMessage, TaskMessage, topics
from murmur.messages.codec import DecodeError, decode_result, decode_task, encode, now_ms
from murmur.worker.admission import valid_reply_to
from tests.support.crash import hold_and_die


class Order(msgspec.Struct):
    sku: str
    qty: int


class Bench:
    """A live worker with a strict agent, a raw broker connection and a results topic."""

    def __init__(self, broker: Broker, worker: Worker, name: str) -> None:
        self.broker = broker
        self.worker = worker
        self.name = name
        self.reply_to = topics.results_topic(uuid.uuid4().hex[:12])
        self.sub: Any = None
        self.results: dict[str, ResultMessage] = {}
        self.answers = 0

    def body(self, input: Any, **fields: Any) -> bytes:
        fields.setdefault("reply_to", self.reply_to)
        fields.setdefault("task_id", uuid.uuid4().hex)
        return encode(
            TaskMessage(
                agent=fields.pop("agent", self.name), input=input, created_at=now_ms(), **fields
            )
        )

    async def send(self, body: bytes, headers: dict[str, str] | None = None) -> None:
        await self.broker.publish([Outbound(topics.task_topic(self.name), body, headers or {})])

    async def collect(self, until: Any, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            for m in await self.sub.get(0.3):
                r = decode_result(m.body)
                self.results[r.task_id] = r
                self.answers += 1

    async def dead(self) -> list[Message]:
        return await self.broker.read(topics.dead_topic(self.name), limit=10_000)

    async def settled(self, timeout: float = 20.0) -> None:
        """Nothing left to deliver and nothing pending: no message loops forever."""
        deadline = time.monotonic() + timeout
        while True:
            s = await self.broker.queue_stats(self.name)
            if s.depth == 0 and s.pending == 0:
                return
            assert time.monotonic() < deadline, f"queue not settled: {s}"
            await asyncio.sleep(0.2)

    async def still_works(self) -> None:
        task_id = "canary-" + uuid.uuid4().hex
        await self.send(self.body({"sku": "ok", "qty": 1}, task_id=task_id))
        await self.collect(lambda: task_id in self.results)
        assert self.results[task_id].status == "ok"


@contextlib.asynccontextmanager
async def bench(url: str, name: str, **kw: Any) -> AsyncIterator[Bench]:
    async def strict(order: Order, ctx: TaskContext) -> Any:
        if order.sku == "raise":
            raise RuntimeError("handler failed on purpose")
        if order.sku == "hang":
            await asyncio.sleep(3600)
        if order.sku == "unencodable":
            return {"value": object()}
        return {"sku": order.sku, "qty": order.qty}

    kw.setdefault("heartbeat_seconds", 0)
    kw.setdefault("reclaim_min_idle_ms", 3000)
    worker = Worker(broker=url, agents=[agent(name=name, timeout=1.0)(strict)], **kw)
    broker = await connect_broker(url)
    await worker.start()
    b = Bench(broker, worker, name)
    b.sub = await broker.subscribe(b.reply_to)
    try:
        yield b
    finally:
        await b.sub.close()
        await worker.stop()
        await broker.close()


async def test_every_kind_of_bad_input(broker_url: str, unique: str) -> None:
    async with bench(broker_url, unique, max_body_bytes=64 * 1024) as b:
        answered = {
            "wrong-shape": (b.body({"sku": 5}), "error", "ValidationError"),
            "wrong-type": (b.body("not an order"), "error", "ValidationError"),
            "raises": (b.body({"sku": "raise", "qty": 1}), "error", "RuntimeError"),
            "hangs": (b.body({"sku": "hang", "qty": 1}), "error", "TimeoutError"),
            "unencodable": (b.body({"sku": "unencodable", "qty": 1}), "error", "EncodeError"),
            "unknown-agent": (b.body({}, agent=unique + "nobody"), "rejected", "UnknownAgent"),
            "envelope-shape": (
                json.dumps({"v": 1, "task_id": "x", "reply_to": b.reply_to, "input": 1}).encode(),
                "rejected",
                "MalformedTask",
            ),
        }
        ids: dict[str, str] = {}
        for label, (body, _, _) in answered.items():
            ids[label] = json.loads(body)["task_id"]
            await b.send(body)
        many_headers = {f"x-h{i}": "v" for i in range(500)}
        await b.send(b.body({"sku": "a", "qty": 1}, task_id="many-headers"), many_headers)
        unanswerable = [
            b"\x00\xff random bytes \x13",
            b.body({"sku": "a", "qty": 1})[:-7],  # truncated JSON
            b"[]",
            b.body({"sku": "a", "qty": 1}, reply_to=None, task_id="ff-fails").replace(
                b'"a"', b'"raise"'
            ),
            b.body({"pad": "x" * 100_000}),  # over max_body_bytes: rejected before decoding
            b.body({"sku": "a", "qty": 1}, reply_to="murmur.x.tasks"),  # reply_to into a task topic
        ]
        for body in unanswerable:
            await b.send(body)
        await b.collect(
            lambda: all(i in b.results for i in ids.values()) and "many-headers" in b.results
        )
        for label, (_, status, type_) in answered.items():
            r = b.results[ids[label]]
            assert (r.status, r.error.type) == (status, type_), label
        assert b.results["many-headers"].error.reason == "too_many_headers"
        await b.settled()
        dead = await b.dead()
        reasons = sorted(m.headers["murmur-dead-reason"] for m in dead)
        assert reasons == sorted(
            [
                "malformed",
                "malformed",
                "malformed",
                "failed",
                "oversize",
                "bad_reply_to",
                "too_many_headers",
                "unknown_agent",
                "malformed",
            ]
        ), reasons
        assert {m.body for m in dead} >= set(unanswerable)
        await b.still_works()


async def test_a_task_past_max_deliveries_is_dead_lettered_and_answered(
    broker_url: str, unique: str
) -> None:
    async with bench(broker_url, unique, max_deliveries=2) as b:
        # Two earlier deliveries crashed their worker before it could answer.
        await b.worker.stop()
        body = b.body({"sku": "a", "qty": 1}, task_id="poison")
        await b.send(body)
        if broker_url.startswith("kafka"):
            # Kafka counts a delivery when a member dies holding it (its session ends).
            for count in (1, 2):
                assert await hold_and_die(broker_url, unique) == count
        else:
            consumer = b.broker.task_consumer(
                unique, consumer_id="crasher", reclaim_min_idle_ms=60_000, max_outstanding=1
            )
            await consumer.start()
            for _ in range(2):
                got: list[Any] = []
                deadline = time.monotonic() + 10
                while not got and time.monotonic() < deadline:
                    got = await consumer.fetch(1, 1.0)
                await consumer.release(got)
            await consumer.close()
        worker = Worker(
            broker=b.broker.url,
            agents=list(b.worker.agents.values()),
            max_deliveries=2,
            heartbeat_seconds=0,
        )
        async with worker:
            await b.collect(lambda: "poison" in b.results)
            await b.settled()
        (dead,) = await b.dead()
    r = b.results["poison"]
    assert r.status == "error" and r.error.type == "MaxDeliveriesExceeded"
    assert dead.body == body
    assert dead.headers["murmur-dead-reason"] == "max_deliveries"
    assert dead.headers["murmur-delivery-count"] == "3"


# CI runs a handful of examples per broker; MURMUR_FUZZ_EXAMPLES=500 for a long hunt.
FUZZ_EXAMPLES = int(os.environ.get("MURMUR_FUZZ_EXAMPLES", "10"))

frames = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda d: json.dumps(d).encode(),
        st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10), max_size=6),
    ),
    st.tuples(st.integers(0, 400), st.integers(1, 255)),  # a byte flip of a valid task
)


class LoopThread:
    """An event loop in a thread, so one live worker serves every hypothesis example."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 90.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _not_for_us(frame: bytes, b: Bench) -> bool:
    """A flip can leave a valid task that is not answered here: one inside the client id is
    answered on another results topic, one in the "reply_to" key makes it fire-and-forget
    (run, and only dead-lettered if it fails)."""
    try:
        task = decode_task(frame)
    except DecodeError:
        return False
    return task.reply_to != b.reply_to and valid_reply_to(task.reply_to)


async def _throw(b: Bench, batch: list[Any]) -> None:
    answers_before, dead_before = b.answers, len(await b.dead())
    elsewhere = 0
    for frame in batch:
        if isinstance(frame, tuple):
            base = bytearray(b.body({"sku": "a", "qty": 1}))
            pos, bit = frame
            base[pos % len(base)] ^= bit
            frame = bytes(base)
        elsewhere += _not_for_us(frame, b)
        await b.send(frame, {"content-type": "application/json"})
    await b.settled(timeout=30)
    await b.collect(lambda: False, timeout=0.3)
    handled = b.answers - answers_before + len(await b.dead()) - dead_before + elsewhere
    assert handled >= len(batch), f"{len(batch)} frames, {handled} answered or dead-lettered"
    await b.still_works()


def test_fuzzed_frames_keep_the_invariants(broker_url: str, unique: str) -> None:
    runner = LoopThread()
    session = bench(broker_url, unique)
    b = runner.run(session.__aenter__())
    try:

        @settings(
            max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck)
        )
        @given(batch=st.lists(frames, min_size=1, max_size=10))
        def check(batch: list[Any]) -> None:
            runner.run(_throw(b, batch))

        check()
    finally:
        runner.run(session.__aexit__(None, None, None))
        runner.close()
