"""The worker: claim tasks from per-agent groups, run them concurrently, answer, acknowledge.

One fetch loop per agent claims messages as credit allows (``concurrency + prefetch``
claimed and unfinished at most), admits them (:mod:`murmur.worker.admission`) and claims
them in the ledger so a duplicate is answered instead of re-run; the agent's start loop
starts each on a slot of a shared ``concurrency`` pool, so the next batch is fetched and
claimed while this one waits for slots. The slot of a slow agent's finished handler goes
straight to that agent's next claimed task unless another agent waits for a slot. A
task's result is recorded, published and only then
acknowledged, in one broker round trip where the broker allows. A lease loop renews every
claim a third of the way into ``reclaim_min_idle_ms``, so slow tasks are never taken away
from a live worker, while a dead worker's claims lapse and are reclaimed by others.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import secrets
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import msgspec
import structlog

from murmur._version import __version__
from murmur.brokers import create_broker
from murmur.brokers.base import (
    Broker,
    Claim,
    ClaimState,
    Delivery,
    Outbound,
    Remember,
    TaskConsumer,
)
from murmur.config import CONCURRENCY, PREFETCH, pick_int, resolve_broker, resolve_keyring
from murmur.errors import BrokerUnavailable, ConfigurationError
from murmur.messages import headers as h
from murmur.messages import topics
from murmur.messages.codec import encode, now_ms
from murmur.messages.envelopes import (
    ErrorInfo,
    Presence,
    ResultMessage,
    RuntimeEvent,
    TaskMessage,
    WorkerInfo,
)
from murmur.runtime.agent import Agent
from murmur.runtime.agent import agent as make_agent
from murmur.runtime.events import Emitter, EventSink, LogSink
from murmur.runtime.runtime import AgentRuntime
from murmur.signing.keyring import RESULT_DOMAIN, KeyInput
from murmur.worker.admission import Limits, Rejection, admit
from murmur.worker.credit import Credit
from murmur.worker.outbox import Outbox
from murmur.worker.stats import WorkerStats

Hook = Callable[..., Any]
_FETCH_TIMEOUT = 1.0
_QUICK_FETCH = 0.01
# Tasks fetched together start together and, if their handlers wait on I/O for about the
# same time, finish together: the loop then works through the whole burst (results,
# acks, the next starts) while every slot sits idle, and the waves persist. Starting the
# tasks of slow agents a few per loop turn breaks the waves up (20 ms tasks at
# concurrency 50: 73 % -> 89 % of ideal); fast handlers start all at once, where the extra
# loop turns would only cost throughput.
_SLOW_HANDLER_MS = 2.0
_STARTS_PER_TURN = 4
_JSON_HEADERS = {h.CONTENT_TYPE: h.JSON}


@dataclass(slots=True)
class _Subscription:
    """One agent's group membership and the deliveries it holds."""

    agent: Agent[Any, Any]
    consumer: TaskConsumer
    # delivery id -> (delivery, task id whose ledger claim we hold, or None)
    held: dict[str, tuple[Delivery, str | None]] = field(default_factory=dict)
    waiting: list[Delivery] = field(default_factory=list)  # claimed, not started
    # claimed in the ledger, waiting for a slot: (delivery, task, when claimed), oldest
    # first; taken by the start loop or handed straight to a slot that frees
    ready: deque[tuple[Delivery, TaskMessage[msgspec.Raw], float]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set when ready fills
    slot_waiters: int = 0  # this agent's coroutines waiting for a slot
    # task id -> resolved when this worker finishes it; ledger claims are re-entrant for
    # their owner, so twins inside one worker are held back here instead.
    active: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    loop: asyncio.Task[None] | None = None
    starter: asyncio.Task[None] | None = None
    handler_ms: float = 0.0  # moving average of the runtime's duration per task


def _stale(sub: _Subscription, claimed_at: float) -> bool:
    """A claim that waited this long for a slot is re-checked before its task runs: the
    worker may have stalled past its leases (see ``Worker._still_ours``)."""
    return time.monotonic() - claimed_at > sub.consumer.lease_ms / 2000


def _resolve_active(sub: _Subscription, task_id: str) -> None:
    """This worker no longer runs ``task_id``: release local twins waiting on it."""
    done = sub.active.pop(task_id, None)
    if done is not None and not done.done():
        done.set_result(None)


def _coerce_agents(agents: Iterable[Any] | Mapping[str, Any]) -> dict[str, Agent[Any, Any]]:
    items: list[tuple[str | None, Any]]
    if isinstance(agents, Mapping):
        items = list(agents.items())
    elif isinstance(agents, Agent) or callable(agents):
        items = [(None, agents)]
    else:
        items = [(None, a) for a in agents]
    out: dict[str, Agent[Any, Any]] = {}
    for name, a in items:
        if not isinstance(a, Agent):
            if not callable(a):
                raise ConfigurationError(f"not an agent: {a!r}")
            a = make_agent(a)
        if name is not None and name != a.name:
            # The seed API maps names to agents: the mapping's key names the topic.
            a = make_agent(
                name=name,
                timeout=a.timeout,
                retries=a.retry.retries,
                retry_on=a.retry.retry_on,
                backoff=a.retry.backoff,
                max_backoff=a.retry.max_backoff,
                description=a.description,
            )(a.fn)
        if a.name in out:
            raise ConfigurationError(f"two agents are named {a.name!r}")
        out[a.name] = a
    if not out:
        raise ConfigurationError("a Worker needs at least one agent")
    return out


class Worker:
    """Hosts agents as a member of each agent's competing-consumer group.

    ``consumer_id`` names this member; keep it stable across restarts (e.g. the pod name)
    and a restarted worker picks up its own unfinished work at once instead of waiting for
    ``reclaim_min_idle_ms``. ``signing_key`` (bytes, ``(new, old)`` or a Keyring; default
    from ``MURMUR_SIGNING_KEYS``) makes the worker reject unsigned or forged tasks and sign
    its results.
    """

    def __init__(
        self,
        *,
        broker: str | Broker | None = None,
        agents: Iterable[Any] | Mapping[str, Any],
        runtime: AgentRuntime | None = None,
        concurrency: int | None = None,
        prefetch: int | None = None,
        consumer_id: str | None = None,
        signing_key: KeyInput | None = None,
        heartbeat_seconds: float = 30.0,
        reclaim_min_idle_ms: int | None = 30_000,
        max_deliveries: int = 5,
        shutdown_timeout: float = 30.0,
        max_body_bytes: int = 1 << 20,
        idempotency_ttl: float = 3600.0,
        broker_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.agents = _coerce_agents(agents)
        self.concurrency = pick_int(concurrency, CONCURRENCY, 10)
        self.prefetch = pick_int(prefetch, PREFETCH, 5)
        if self.concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, got {self.prefetch}")
        if heartbeat_seconds < 0:
            raise ConfigurationError("heartbeat_seconds must be >= 0 (0 disables heartbeats)")
        if reclaim_min_idle_ms is not None and reclaim_min_idle_ms < 0:
            raise ConfigurationError("reclaim_min_idle_ms must be >= 0, or None to disable reclaim")
        if max_deliveries < 1:
            raise ConfigurationError("max_deliveries must be >= 1")
        if shutdown_timeout < 0:
            raise ConfigurationError("shutdown_timeout must be >= 0")
        if max_body_bytes < 1024:
            raise ConfigurationError("max_body_bytes must be >= 1024")
        if idempotency_ttl <= 0:
            raise ConfigurationError("idempotency_ttl must be > 0")
        self.consumer_id = topics.validate_name(
            consumer_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}",
            "consumer_id",
        )
        self.worker_id = self.consumer_id
        self.keyring = resolve_keyring(signing_key)
        self.heartbeat_seconds = float(heartbeat_seconds)
        self.reclaim_min_idle_ms = reclaim_min_idle_ms or None
        self.max_deliveries = max_deliveries
        self.shutdown_timeout = shutdown_timeout
        self.idempotency_ttl_ms = int(idempotency_ttl * 1000)
        self.limits = Limits(max_body_bytes=max_body_bytes, max_deliveries=max_deliveries)
        self.broker = create_broker(resolve_broker(broker), **dict(broker_options or {}))
        self._owns_broker = not isinstance(broker, Broker)
        self.emitter = Emitter([LogSink()]) if runtime is None else runtime.emitter
        self.runtime = runtime or AgentRuntime(
            worker_id=self.worker_id, emitter=self.emitter, max_threads=self.concurrency
        )
        self.runtime.worker_id = self.worker_id
        self.stats = WorkerStats()
        self.log = structlog.get_logger("murmur.worker").bind(worker_id=self.worker_id)
        self._hooks: dict[str, list[Hook]] = {"start": [], "complete": [], "error": []}
        self._subs: dict[str, _Subscription] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._state = "new"
        self._stopped: asyncio.Event | None = None
        self._credit: Credit | None = None
        self._slots: asyncio.Semaphore | None = None
        self._slot_waiters = 0  # coroutines of every agent waiting for a slot
        self._outbox: Outbox | None = None
        self._started_at = 0
        self.broker_connected = False

    # hooks ---------------------------------------------------------------------------

    def on_task_start(self, fn: Hook) -> Hook:
        """Register ``fn(task)`` (sync or async), called before a task runs."""
        self._hooks["start"].append(fn)
        return fn

    def on_task_complete(self, fn: Hook) -> Hook:
        """Register ``fn(task, result)``, called after a task produced an ``ok`` result."""
        self._hooks["complete"].append(fn)
        return fn

    def on_task_error(self, fn: Hook) -> Hook:
        """Register ``fn(task, result)``, called after a task ended with an error."""
        self._hooks["error"].append(fn)
        return fn

    async def _call_hooks(self, kind: str, *args: Any) -> None:
        for fn in self._hooks[kind]:
            try:
                out = fn(*args)
                if inspect.isawaitable(out):
                    await out
            except Exception as exc:
                self.log.warning(
                    "hook_failed", hook=kind, error=type(exc).__name__, message=str(exc)[:200]
                )

    # lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def in_flight(self) -> int:
        return self.stats.in_flight

    async def start(self) -> None:
        """Connect, join every agent's group and start consuming. Idempotent."""
        if self._state != "new":
            return
        self._state = "starting"
        self._stopped = asyncio.Event()
        self._credit = Credit(self.concurrency + self.prefetch)
        self._slots = asyncio.Semaphore(self.concurrency)
        try:
            await self.broker.connect()
            self.broker_connected = True
            for name, a in self.agents.items():
                consumer = self.broker.task_consumer(
                    name,
                    consumer_id=self.consumer_id,
                    reclaim_min_idle_ms=self.reclaim_min_idle_ms,
                    max_outstanding=self.concurrency + self.prefetch,
                    max_deliveries=self.max_deliveries,
                )
                await consumer.start()
                self._subs[name] = _Subscription(a, consumer)
        except BaseException:
            self._state = "new"
            await self._close_consumers()
            if self._owns_broker:
                await self.broker.close()
            raise
        self._outbox = Outbox(self.broker)
        self._outbox.start()
        self._started_at = now_ms()
        self.stats = WorkerStats()
        self._state = "running"
        for sub in self._subs.values():
            sub.loop = asyncio.create_task(
                self._fetch_loop(sub), name=f"murmur-fetch-{sub.agent.name}"
            )
            sub.starter = asyncio.create_task(
                self._start_loop(sub), name=f"murmur-start-{sub.agent.name}"
            )
        self._background.append(asyncio.create_task(self._lease_loop(), name="murmur-leases"))
        if self.heartbeat_seconds > 0:
            self._background.append(
                asyncio.create_task(self._heartbeat_loop(), name="murmur-heartbeat")
            )
        self._announce("worker.started")
        if self.heartbeat_seconds > 0:
            await self._put_presence()  # listed by `murmur status` as soon as start returns
        self.log.info(
            "worker_started",
            broker=self.broker.display_url,
            agents=list(self.agents),
            topics=[topics.task_topic(a) for a in self.agents],
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            signed=self.keyring is not None,
            reclaim_min_idle_ms=self.reclaim_min_idle_ms,
            version=__version__,
        )

    async def stop(self) -> None:
        """Stop claiming, hand back unstarted work, drain in-flight tasks, disconnect.

        In-flight tasks get ``shutdown_timeout`` seconds; any still running then are
        cancelled and handed back unacknowledged (never acknowledged unfinished), so
        another worker runs them.
        """
        if self._state in ("new", "stopping", "stopped"):
            if self._state == "stopping" and self._stopped is not None:
                await self._stopped.wait()
            return
        self._state = "stopping"
        self.log.info("worker_stopping", in_flight=self.stats.in_flight)
        loops = {t for s in self._subs.values() for t in (s.loop, s.starter) if t is not None}
        while loops:
            # Cancel until they are gone: on Python 3.11 asyncio.wait_for (in client
            # libraries) can swallow a cancellation that races with a wake-up.
            for t in loops:
                t.cancel()
            _, loops = await asyncio.wait(loops, timeout=1.0)
        await self._release_waiting()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.shutdown_timeout)
            if pending:
                self.log.warning("shutdown_timeout_cancelling", tasks=len(pending))
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        self._announce("worker.stopped")
        if self.heartbeat_seconds > 0:
            await self._drop_presence()
        if self._outbox is not None:
            await self._outbox.close()
        await self._close_consumers()
        if self._owns_broker:
            await self.broker.close()
        self.broker_connected = False
        self.runtime.shutdown()
        self._state = "stopped"
        self.log.info("worker_stopped", processed=self.stats.processed, failed=self.stats.failed)
        assert self._stopped is not None
        self._stopped.set()

    async def _close_consumers(self) -> None:
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.consumer.close()
        self._subs.clear()

    async def run(self) -> None:
        """Start, print a banner, and block until SIGINT/SIGTERM; then drain and stop.

        A second signal exits at once (exit code 130), leaving unfinished work to be
        reclaimed by other workers.
        """
        await self.start()
        self._print_banner()
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                self.log.info("signal_received", signal=sig.name, action="draining")
                stop_requested.set()
            else:
                self.log.warning("signal_received", signal=sig.name, action="exit_now")
                os._exit(130)

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
        try:
            assert self._stopped is not None
            stopped = asyncio.ensure_future(self._stopped.wait())
            requested = asyncio.ensure_future(stop_requested.wait())
            await asyncio.wait({stopped, requested}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            requested.cancel()
        finally:
            await self.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _print_banner(self) -> None:
        lines = [
            f"murmur {__version__} worker {self.worker_id}",
            f"  broker       {self.broker.display_url}",
            f"  agents       {', '.join(self.agents)}",
            f"  topics       {', '.join(topics.task_topic(a) for a in self.agents)}",
            f"  concurrency  {self.concurrency}  prefetch {self.prefetch}  "
            f"reclaim {self.reclaim_min_idle_ms or 'off'} ms  max deliveries {self.max_deliveries}",
            f"  signing      {'keys ' + ', '.join(self.keyring.kids) if self.keyring else 'off'}",
            "  Ctrl-C drains in-flight tasks and stops; press twice to exit at once.",
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)

    # fetching ------------------------------------------------------------------------

    async def _fetch_loop(self, sub: _Subscription) -> None:
        assert self._credit is not None
        credit = self._credit
        shared = len(self._subs) > 1
        # With several agents, a loop that blocks on an empty queue holds only a small
        # share of the credit, so agents that do have work are never starved; a loop whose
        # last fetch came back full asks for everything, but without blocking.
        small = max(1, self.prefetch // len(self._subs))
        saturated = False
        backoff = 0.1
        while self._state == "running":
            if shared and not saturated:
                n, timeout = await credit.acquire(small), _FETCH_TIMEOUT
            else:
                n = await credit.acquire(credit.total)
                timeout = _QUICK_FETCH if shared else _FETCH_TIMEOUT
            try:
                deliveries = await sub.consumer.fetch(n, timeout)
            except asyncio.CancelledError:
                credit.release(n)
                raise
            except Exception as exc:
                credit.release(n)
                self.broker_connected = not isinstance(exc, BrokerUnavailable)
                if isinstance(exc, BrokerUnavailable):
                    self.log.warning(
                        "fetch_failed", agent=sub.agent.name, error=str(exc)[:200], retry_in=backoff
                    )
                else:  # an adapter bug must not kill the loop silently
                    self.log.exception(
                        "fetch_error", agent=sub.agent.name, error=type(exc).__name__
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.broker_connected = True
            credit.release(n - len(deliveries))
            saturated = len(deliveries) == n
            if not deliveries:
                continue
            for d in deliveries:
                sub.held[d.id] = (d, None)
            if self._state != "running":  # claimed while stopping: hand straight back
                await self._give_back(sub, deliveries)
                return
            try:
                await self._admit_batch(sub, deliveries)
            except Exception as exc:  # a bug here must not stop this agent's consumption
                self.log.exception(
                    "admission_failed", agent=sub.agent.name, error=type(exc).__name__
                )
                await self._give_back(sub, [d for d in deliveries if d.id in sub.held])

    async def _admit_batch(self, sub: _Subscription, deliveries: list[Delivery]) -> None:
        runnable: list[tuple[Delivery, TaskMessage[msgspec.Raw]]] = []
        for d in deliveries:
            if d.delivery_count > 1:
                self.stats.redeliveries += 1
            verdict = admit(d, sub.agent.name, self.agents, self.keyring, self.limits)
            if isinstance(verdict, Rejection):
                self._spawn(self._reject(sub, d, verdict))
            else:
                runnable.append((d, verdict))
        if not runnable:
            return
        twins = []
        unique_ids: set[str] = set()
        for d, task in runnable:
            if task.task_id in sub.active or task.task_id in unique_ids:
                twins.append((d, task))
            else:
                unique_ids.add(task.task_id)
        if twins:
            runnable = [r for r in runnable if r not in twins]
            for d, task in twins:
                self._spawn(self._await_twin(sub, d, task))
        if not runnable:
            return
        sub.waiting.extend(d for d, _ in runnable)
        try:
            claims = await sub.consumer.claim([t.task_id for _, t in runnable])
            claimed_at = time.monotonic()
        except Exception as exc:
            # Without the ledger we cannot tell a duplicate from new work: hand the batch
            # back; it is redelivered once the broker is reachable.
            self.log.warning("ledger_unavailable", agent=sub.agent.name, error=str(exc)[:200])
            await self._give_back(sub, [d for d, _ in runnable])
            return
        loop = asyncio.get_running_loop()
        for (d, task), claim in zip(runnable, claims, strict=True):
            if claim.state is ClaimState.CLAIMED:
                sub.held[d.id] = (d, task.task_id)  # from now on the lease covers the claim
                sub.active[task.task_id] = loop.create_future()
                sub.ready.append((d, task, claimed_at))
                sub.wake.set()
                continue
            sub.waiting.remove(d)
            self._defer_to_ledger(sub, d, task, claim)

    async def _start_loop(self, sub: _Subscription) -> None:
        """Start claimed tasks in claim order as slots free up.

        A separate loop so the fetch loop claims the next batch while this one waits for
        slots: a slot that frees finds its next task already claimed (and usually takes
        it itself, see :meth:`_hand_slot`).
        """
        assert self._slots is not None
        slots, ready = self._slots, sub.ready
        burst = 0
        while True:
            if not ready:
                sub.wake.clear()
                await sub.wake.wait()
                continue
            if sub.handler_ms >= _SLOW_HANDLER_MS:
                burst += 1
                if burst == _STARTS_PER_TURN:
                    burst = 0
                    await asyncio.sleep(0)  # see _SLOW_HANDLER_MS
            await self._acquire_slot(sub)
            head = self._next_ready(sub)
            if head is None:  # a slot that freed meanwhile took it, or it was handed back
                slots.release()
                continue
            d, task, claimed_at = ready.popleft()
            try:
                if _stale(sub, claimed_at) and not await self._still_ours(sub, d, task):
                    slots.release()
                    continue
            except BaseException:
                slots.release()
                raise
            self._started(sub, d)
            self._spawn(self._execute(sub, d, task))

    async def _acquire_slot(self, sub: _Subscription) -> None:
        """Wait for a slot, counted so a freed slot is not handed past a waiting agent."""
        assert self._slots is not None
        self._slot_waiters += 1
        sub.slot_waiters += 1
        try:
            await self._slots.acquire()
        finally:
            self._slot_waiters -= 1
            sub.slot_waiters -= 1

    def _hand_slot(self, sub: _Subscription) -> tuple[Delivery, TaskMessage[msgspec.Raw]] | None:
        """The oldest claimed task of ``sub`` to run on the slot its finished task frees.

        None when there is none, when another agent waits for a slot (it gets the slot:
        agents share the pool fairly) or when the task waited so long that its claim must
        be re-checked first (the start loop does that); the caller then releases the slot.
        Only for slow handlers: fast ones are better started in batches by the start loop,
        where the writes of one batch overlap the fetch and claim of the next (handing
        slots over cost no-op tasks 12 % of their throughput).
        """
        if (
            sub.handler_ms < _SLOW_HANDLER_MS
            or self._state != "running"
            or self._slot_waiters > sub.slot_waiters
        ):
            return None
        head = self._next_ready(sub)
        if head is None or _stale(sub, head[2]):
            return None
        d, task, _ = sub.ready.popleft()
        self._started(sub, d)
        return d, task

    @staticmethod
    def _next_ready(sub: _Subscription) -> tuple[Delivery, TaskMessage[msgspec.Raw], float] | None:
        """The oldest claimed task still waiting to start, left in ``sub.ready``; tasks
        handed back meanwhile are dropped from its head."""
        ready = sub.ready
        while ready:
            head = ready[0]
            if head[0] in sub.waiting:
                return head
            ready.popleft()
            _resolve_active(sub, head[1].task_id)
        return None

    def _started(self, sub: _Subscription, d: Delivery) -> None:
        """``d`` is no longer waiting: it runs now, on a slot its caller holds."""
        sub.waiting.remove(d)
        self.stats.in_flight += 1

    async def _still_ours(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw]
    ) -> bool:
        """Re-check a claim that waited long for a slot before running its task.

        If this worker's loop stalled (SIGSTOP, a blocking call, a VM pause) its leases
        lapsed and another worker may have reclaimed and run the task meanwhile. Running it
        again would be a needless duplicate execution: answer from the ledger, or wait for
        the new owner, instead. Costs one ledger round trip, only for tasks that waited.
        """
        try:
            (claim,) = await sub.consumer.claim([task.task_id])
        except Exception as exc:
            self.log.warning("ledger_unavailable", agent=sub.agent.name, error=str(exc)[:200])
            claim = None
        if claim is not None and claim.state is ClaimState.CLAIMED:
            return True
        sub.waiting.remove(d)
        sub.held[d.id] = (d, None)  # the ledger claim is no longer ours to renew
        _resolve_active(sub, task.task_id)
        self.stats.stale_claims += 1
        self.log.info(
            "stale_claim_not_run",
            agent=sub.agent.name,
            task_id=task.task_id,
            state=claim.state.value if claim else "unknown",
        )
        if claim is None:
            await self._give_back(sub, [d])
        else:
            self._defer_to_ledger(sub, d, task, claim)
        return False

    def _defer_to_ledger(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw], claim: Claim
    ) -> None:
        """Someone else has this task id: answer from its stored result, or wait for it."""
        if claim.state is ClaimState.DONE:
            self._spawn(self._answer_duplicate(sub, d, task, claim.result or b""))
        else:
            self._spawn(self._await_twin(sub, d, task))

    def _spawn(self, coro: Awaitable[None]) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task[None]) -> None:
        self._tasks.discard(t)
        if not t.cancelled() and (exc := t.exception()) is not None:
            # Every per-delivery path handles its own errors; reaching here is a bug.
            self.log.error(
                "delivery_task_crashed", error=type(exc).__name__, message=str(exc)[:300]
            )

    async def _give_back(self, sub: _Subscription, deliveries: list[Delivery]) -> None:
        task_ids = [tid for d in deliveries if (tid := sub.held.get(d.id, (d, None))[1])]
        for d in deliveries:
            sub.held.pop(d.id, None)
            with contextlib.suppress(ValueError):
                sub.waiting.remove(d)
        try:
            await sub.consumer.release(deliveries, task_ids)
        except Exception as exc:
            self.log.warning("release_failed", agent=sub.agent.name, error=str(exc)[:200])
        assert self._credit is not None
        self._credit.release(len(deliveries))

    async def _release_waiting(self) -> None:
        for sub in self._subs.values():
            sub.ready.clear()
            if sub.waiting:
                waiting = list(sub.waiting)
                self.log.info("handing_back_unstarted", agent=sub.agent.name, count=len(waiting))
                await self._give_back(sub, waiting)

    # per-delivery paths ----------------------------------------------------------------

    async def _execute(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw]
    ) -> None:
        """Run ``task`` on the slot its caller acquired, then the tasks handed to that slot.

        When a handler returns, the slot goes straight to the next claimed task
        (:meth:`_hand_slot`), whose handler starts in the same loop turn, and the finished
        task's result is written by a task of its own. Releasing the slot to the start
        loop instead cost two loop turns per task: about 5 % of the throughput of 20 ms
        I/O tasks at concurrency 50, more on a busy loop.
        """
        assert self._slots is not None
        nxt: tuple[Delivery, TaskMessage[msgspec.Raw]] | None = (d, task)
        while nxt is not None:
            d, task = nxt
            t0 = time.perf_counter()
            try:
                if self._hooks["start"]:
                    await self._call_hooks("start", task)
                sink = self._event_sink(task.events_topic) if task.events_topic else None
                result = await self.runtime.run(
                    sub.agent, task, delivery_count=d.delivery_count, sink=sink
                )
            except Exception as exc:  # a bug: hand it back rather than lose it
                self._slots.release()
                self._log_completion_failed(sub, task, exc)
                await self._unfinished(sub, d, task)
                return
            except BaseException:  # cancelled at shutdown: hand it back for another worker
                self._slots.release()
                await self._unfinished(sub, d, task)
                raise
            # The handler is done: its slot runs the next task while this result is written
            # and acknowledged (the credit still bounds deliveries held but not answered).
            # Holding it through the write cost a third of the throughput of I/O-bound work.
            sub.handler_ms += (result.duration_ms - sub.handler_ms) * 0.1
            nxt = self._hand_slot(sub)
            if nxt is None:
                self._slots.release()
                await self._finish(sub, d, task, result, sink, t0)
            else:
                self._spawn(self._finish(sub, d, task, result, sink, t0))

    async def _finish(
        self,
        sub: _Subscription,
        d: Delivery,
        task: TaskMessage[msgspec.Raw],
        result: ResultMessage,
        sink: EventSink | None,
        t0: float,
    ) -> None:
        """Record, publish and acknowledge a task whose handler returned, then run hooks."""
        a = sub.agent
        finished = False
        try:
            body = encode(result)
            publish = []
            remember: Remember | None = Remember(task.task_id, body, self._ledger_ttl(task))
            if task.reply_to:
                publish.append(Outbound(task.reply_to, body, self._result_headers(body, d.headers)))
            elif result.status != "ok":
                # Fire-and-forget work that failed must not vanish: keep it as a dead letter.
                publish.append(self._dead_letter(a.name, d, "failed", result.error))
                self.stats.dead_lettered += 1
                # Not a final answer: `murmur dlq replay` requeues it under the same task id,
                # and a ledger entry would answer that replay instead of running it.
                remember = None
            if sink is not None and self._outbox is not None:
                await self._outbox.flush()  # events before the result they lead up to
            await self._complete(sub, d, publish, remember)
            finished = True
            self.stats.finished(a.name, result.status, time.perf_counter() - t0)
            if self._hooks["complete"] or self._hooks["error"]:
                if isinstance(result.output, msgspec.Raw):  # hooks see plain values
                    output = msgspec.json.decode(result.output)
                    result = msgspec.structs.replace(result, output=output)
                await self._call_hooks("complete" if result.ok else "error", task, result)
        except Exception as exc:  # an adapter bug: hand the task back rather than lose it
            self._log_completion_failed(sub, task, exc)
        finally:
            if finished:
                self.stats.in_flight -= 1
                _resolve_active(sub, task.task_id)
            else:
                # Cancelled at shutdown: hand it back unacknowledged for another worker.
                await self._unfinished(sub, d, task)

    async def _unfinished(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw]
    ) -> None:
        self.stats.in_flight -= 1
        _resolve_active(sub, task.task_id)
        await self._give_back(sub, [d])

    def _log_completion_failed(
        self, sub: _Subscription, task: TaskMessage[msgspec.Raw], exc: Exception
    ) -> None:
        self.log.exception(
            "task_completion_failed",
            agent=sub.agent.name,
            task_id=task.task_id,
            error=type(exc).__name__,
        )

    async def _complete(
        self,
        sub: _Subscription,
        d: Delivery,
        publish: list[Outbound],
        remember: Remember | None = None,
    ) -> None:
        """Record, publish and acknowledge; retried while the broker is away (never lost)."""
        delay = 0.1
        while True:
            try:
                await sub.consumer.complete(d, publish, remember)
                break
            except Exception as exc:
                if not isinstance(exc, BrokerUnavailable):  # an adapter bug: don't lose it
                    self.log.exception(
                        "complete_failed", agent=sub.agent.name, error=type(exc).__name__
                    )
                    await self._give_back(sub, [d])
                    return
                self.broker_connected = False
                self.log.warning(
                    "complete_failed", agent=sub.agent.name, error=str(exc)[:200], retry_in=delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        sub.held.pop(d.id, None)
        assert self._credit is not None
        self._credit.release(1)

    async def _reject(self, sub: _Subscription, d: Delivery, rej: Rejection) -> None:
        self.stats.rejected[rej.reason] += 1
        publish: list[Outbound] = []
        result = ResultMessage(
            task_id=rej.task_id or "",
            request_id=rej.request_id or "",
            agent=sub.agent.name,
            status=rej.status,  # type: ignore[arg-type]
            error=ErrorInfo(type=rej.type, message=rej.message, retryable=False, reason=rej.reason),
            worker_id=self.worker_id,
            finished_at=now_ms(),
            delivery_count=d.delivery_count,
        )
        if rej.reply_to and rej.task_id:
            body = encode(result)
            publish.append(Outbound(rej.reply_to, body, self._result_headers(body, d.headers)))
        if rej.dead_letter or not publish:
            publish.append(self._dead_letter(sub.agent.name, d, rej.reason, result.error))
            self.stats.dead_lettered += 1
        event = "task.dead_lettered" if rej.reason == "max_deliveries" else "task.rejected"
        self.emitter.emit(
            RuntimeEvent(
                type=event,
                task_id=rej.task_id,
                agent=sub.agent.name,
                worker_id=self.worker_id,
                request_id=rej.request_id,
                ts=now_ms(),
                payload={
                    "reason": rej.reason,
                    "error": rej.type,
                    "delivery": d.id,
                    "delivery_count": d.delivery_count,
                    "answered": bool(rej.reply_to and rej.task_id),
                    "dead_lettered": rej.dead_letter or not (rej.reply_to and rej.task_id),
                },
            )
        )
        await self._complete(sub, d, publish)

    async def _answer_duplicate(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw], stored: bytes
    ) -> None:
        """A task that already finished: re-publish its stored result instead of running it."""
        self.stats.duplicates += 1
        publish = []
        if task.reply_to:
            publish.append(Outbound(task.reply_to, stored, self._result_headers(stored, d.headers)))
        self.log.info(
            "duplicate_answered_from_ledger",
            agent=sub.agent.name,
            task_id=task.task_id,
            delivery_count=d.delivery_count,
        )
        await self._complete(sub, d, publish)

    async def _await_twin(
        self, sub: _Subscription, d: Delivery, task: TaskMessage[msgspec.Raw]
    ) -> None:
        """Someone runs this task id right now: wait for its result (or its death).

        A twin inside this worker waits on the original's completion; a twin held by
        another worker polls the ledger until the result is stored or the other
        worker's claim lapses (then this worker runs it).
        """
        period = sub.consumer.lease_ms / 3000
        while True:
            local = sub.active.get(task.task_id)
            if local is not None:
                await asyncio.shield(local)
            else:
                await asyncio.sleep(period * (0.5 + random.random()))
            if task.task_id in sub.active:  # another local twin took it meanwhile
                continue
            try:
                (claim,) = await sub.consumer.claim([task.task_id])
            except BrokerUnavailable:
                continue
            if claim.state is ClaimState.DONE:
                await self._answer_duplicate(sub, d, task, claim.result or b"")
                return
            if claim.state is ClaimState.CLAIMED:
                sub.held[d.id] = (d, task.task_id)
                sub.active[task.task_id] = asyncio.get_running_loop().create_future()
                await self._acquire_slot(sub)
                self.stats.in_flight += 1
                await self._execute(sub, d, task)
                return

    # helpers ---------------------------------------------------------------------------

    def _result_headers(self, body: bytes, task_headers: Mapping[str, str]) -> dict[str, str]:
        """Sign with the key that signed the task: during a key rotation a publisher
        still on the old key must accept the answer."""
        if self.keyring is None:
            return _JSON_HEADERS
        kid = task_headers.get(h.KEY_ID)
        return {h.CONTENT_TYPE: h.JSON, **self.keyring.headers(body, RESULT_DOMAIN, kid)}

    def _dead_letter(
        self, agent: str, d: Delivery, reason: str, error: ErrorInfo | None
    ) -> Outbound:
        headers = dict(d.headers)
        headers.update(
            {
                h.DEAD_REASON: reason,
                h.DEAD_ERROR: (f"{error.type}: {error.message}" if error else reason)[:1000],
                h.DELIVERY_COUNT: str(d.delivery_count),
                h.DEAD_AT: str(now_ms()),
                h.DEAD_WORKER: self.worker_id,
            }
        )
        return Outbound(topics.dead_topic(agent), d.body, headers)

    def _ledger_ttl(self, task: TaskMessage[Any]) -> int:
        if task.expires_at is not None:
            # A replay is impossible after expiry (+ skew): keep the result until then.
            return max(1_000, task.expires_at - now_ms() + self.limits.clock_skew_ms)
        return self.idempotency_ttl_ms

    def _event_sink(self, topic: str) -> EventSink:
        outbox = self._outbox
        assert outbox is not None

        def sink(event: RuntimeEvent) -> None:
            outbox.put(Outbound(topic, encode(event), _JSON_HEADERS))

        return sink

    # background loops ------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        period = (self.reclaim_min_idle_ms or 30_000) / 3000
        while True:
            await asyncio.sleep(period)
            for sub in list(self._subs.values()):
                if not sub.held:
                    continue
                held = list(sub.held.values())
                try:
                    await sub.consumer.extend([d for d, _ in held], [t for _, t in held if t])
                except Exception as exc:
                    self.log.warning(
                        "lease_renewal_failed", agent=sub.agent.name, error=str(exc)[:200]
                    )

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            agents=list(self.agents),
            version=__version__,
            in_flight=self.stats.in_flight,
            processed=self.stats.processed,
            failed=self.stats.failed,
            uptime_s=round(self.stats.uptime_s, 3),
            interval_s=self.heartbeat_seconds,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            started_at=self._started_at,
        )

    def _announce(self, type: str) -> None:
        """Log a ``worker.*`` event and, with heartbeats on, publish it for ``murmur status``."""
        info = msgspec.to_builtins(self.info())
        event = RuntimeEvent(type=type, worker_id=self.worker_id, ts=now_ms(), payload=info)
        if type != "worker.heartbeat":
            self.emitter.emit(event)
        if self._outbox is not None and self.heartbeat_seconds > 0:
            self._outbox.put(Outbound(topics.HEARTBEATS, encode(event), _JSON_HEADERS))

    async def _heartbeat_loop(self) -> None:
        while True:
            # Jitter keeps a fleet started together from beating in lockstep.
            await asyncio.sleep(self.heartbeat_seconds * random.uniform(0.9, 1.1))
            self._announce("worker.heartbeat")
            await self._put_presence()

    @property
    def presence_ttl_ms(self) -> int:
        """How long a presence record outlives its beat: ~3 missed beats (DESIGN §5), plus
        2 s for jitter, a slow write and clocks."""
        return int((3 * self.heartbeat_seconds + 2.0) * 1000)

    async def _put_presence(self) -> None:
        """Write this worker's presence record; a failure is logged and counted, never
        raised: the next beat tries again, and tasks do not depend on it."""
        beat_at = now_ms()
        ttl_ms = self.presence_ttl_ms
        record = Presence(
            **msgspec.structs.asdict(self.info()), beat_at=beat_at, expires_at=beat_at + ttl_ms
        )
        try:
            await self.broker.put_presence(self.worker_id, encode(record), ttl_ms)
        except Exception as exc:
            self.stats.presence_failures += 1
            self.log.warning("presence_write_failed", error=str(exc)[:200] or type(exc).__name__)

    async def _drop_presence(self) -> None:
        """Leave the live set at once on a graceful stop (a killed worker's record expires)."""
        try:
            await self.broker.drop_presence(self.worker_id)
        except Exception as exc:
            self.stats.presence_failures += 1
            self.log.warning("presence_drop_failed", error=str(exc)[:200] or type(exc).__name__)
