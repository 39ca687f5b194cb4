"""The in-process runtime: run one task through its agent and always return a result.

Decode the input against the agent's type, call the handler with a :class:`TaskContext`,
enforce the timeout over the whole run, retry retryable failures with backoff inside the
deadline, validate and pre-encode the output. Whatever the handler does (raise, hang,
ignore cancellation, return something unencodable) the caller gets a ``ResultMessage``;
only cancellation of the runtime itself (worker shutdown) propagates.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import msgspec
import structlog

from murmur.errors import AgentError, EncodeError
from murmur.messages.codec import encode_raw
from murmur.messages.envelopes import ErrorInfo, ResultMessage, TaskMessage
from murmur.runtime.agent import Agent
from murmur.runtime.context import TaskContext
from murmur.runtime.events import Emitter, EventSink, LogSink, TaskEvents, task_sink
from murmur.runtime.inline import HandlerTimeout, call_inline, consume_exception

# How long a cancelled handler gets to unwind before the runtime stops waiting for it.
_CANCEL_GRACE = 1.0
_ANY_OUTPUT = (Any, object)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class AgentRuntime:
    """Runs tasks for a set of agents; shared by all tasks of a worker.

    ``executor`` runs sync handlers (a thread pool sized to the worker's concurrency by
    default) so a blocking handler never stalls the event loop that renews leases.
    """

    def __init__(
        self,
        *,
        worker_id: str = "local",
        emitter: Emitter | None = None,
        executor: Executor | None = None,
        max_threads: int = 32,
    ) -> None:
        self.worker_id = worker_id
        self.emitter = emitter if emitter is not None else Emitter([LogSink()])
        self._executor = executor
        self._max_threads = max_threads
        self._own_executor: ThreadPoolExecutor | None = None
        self.log = structlog.get_logger("murmur.runtime")
        self.abandoned = 0  # handlers that ignored cancellation and were left behind

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._own_executor = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix="murmur-handler"
            )
            self._executor = self._own_executor
        return self._executor

    def shutdown(self) -> None:
        if self._own_executor is not None:
            # Threads stuck in a hung sync handler cannot be killed; don't wait for them.
            self._own_executor.shutdown(wait=False, cancel_futures=True)
            self._own_executor = None
            self._executor = None

    async def run(
        self,
        agent: Agent[Any, Any],
        task: TaskMessage[msgspec.Raw],
        *,
        delivery_count: int = 1,
        sink: EventSink | None = None,
    ) -> ResultMessage:
        """Run ``task`` on ``agent``; ``sink`` receives this task's events (its events_topic)."""
        token = task_sink.set(sink)
        try:
            return await self._run(agent, task, delivery_count)
        finally:
            task_sink.reset(token)

    async def _run(
        self, agent: Agent[Any, Any], task: TaskMessage[msgspec.Raw], delivery_count: int
    ) -> ResultMessage:
        started_at = _now_ms()
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        events = TaskEvents(
            self.emitter,
            task_id=task.task_id,
            agent=agent.name,
            worker_id=self.worker_id,
            request_id=task.request_id or None,
            loop=loop,
        )

        def finish(
            status: str, output: Any = None, error: ErrorInfo | None = None, attempt: int = 1
        ) -> ResultMessage:
            return ResultMessage(
                task_id=task.task_id,
                request_id=task.request_id,
                agent=agent.name,
                status=status,  # type: ignore[arg-type]
                output=output,
                error=error,
                attempt=attempt,
                worker_id=self.worker_id,
                started_at=started_at,
                finished_at=_now_ms(),
                duration_ms=round((time.perf_counter() - t0) * 1000, 3),
                delivery_count=delivery_count,
            )

        try:
            value = agent.decode_input(task.input)
        except msgspec.ValidationError as exc:
            error = ErrorInfo(
                type="ValidationError", message=f"invalid input: {exc}", retryable=False
            )
            events.publish(
                "task.failed", {"error": error.type, "message": error.message}, always=True
            )
            return finish("error", error=error)
        except msgspec.DecodeError as exc:  # Raw input is valid JSON by construction
            error = ErrorInfo(
                type="ValidationError", message=f"invalid input: {exc}", retryable=False
            )
            return finish("error", error=error)

        deadline = None if agent.timeout is None else time.monotonic() + agent.timeout
        wall_deadline = None if agent.timeout is None else time.time() + agent.timeout
        policy = agent.retry
        attempt = 0
        while True:
            attempt += 1
            ctx = TaskContext(
                task_id=task.task_id,
                agent=agent.name,
                attempt=attempt,
                delivery_count=delivery_count,
                deadline=wall_deadline,
                request_id=task.request_id,
                worker_id=self.worker_id,
                events=events,
            )
            if events.wanted:  # no payload dict per task when nobody listens
                events.publish(
                    "task.started", {"attempt": attempt, "delivery_count": delivery_count}
                )
            try:
                remaining = None if deadline is None else deadline - time.monotonic()
                output = await self._call(agent, value, ctx, remaining)
            except HandlerTimeout as exc:
                if exc.abandoned:
                    self.abandoned += 1
                error = ErrorInfo(
                    type="TimeoutError",
                    message=f"agent {agent.name!r} did not finish within its "
                    f"{agent.timeout}s timeout",
                    retryable=True,
                )
                return self._failed(events, finish, error, attempt)
            except Exception as exc:
                retryable = policy.is_retryable(exc)
                if retryable and attempt <= policy.retries:
                    delay = policy.delay(attempt)
                    if deadline is None or time.monotonic() + delay < deadline:
                        events.publish(
                            "task.retrying",
                            {
                                "attempt": attempt,
                                "error": type(exc).__name__,
                                "delay_s": round(delay, 3),
                            },
                            always=True,
                        )
                        await asyncio.sleep(delay)
                        continue
                return self._failed(events, finish, _error_info(exc, retryable), attempt)
            return self._completed(agent, events, finish, output, attempt)

    async def _call(
        self, agent: Agent[Any, Any], value: Any, ctx: TaskContext, timeout: float | None
    ) -> Any:
        if timeout is not None and timeout <= 0:
            raise HandlerTimeout(abandoned=False)
        if agent.is_async:
            return await call_inline(agent.call(value, ctx), timeout, _CANCEL_GRACE)
        # Run in the executor with this context (task sink, structlog contextvars).
        call: Callable[[], Any] = functools.partial(
            contextvars.copy_context().run, agent.call, value, ctx
        )
        inner = asyncio.get_running_loop().run_in_executor(self.executor, call)
        if await _finished_within(inner, timeout):
            return inner.result()
        inner.cancel()
        # Give the handler a moment to unwind; one that swallows cancellation is abandoned
        # (counted) rather than allowed to hold the task forever.
        if not await _finished_within(inner, _CANCEL_GRACE):
            inner.add_done_callback(consume_exception)
            raise HandlerTimeout(abandoned=True)
        raise HandlerTimeout(abandoned=False)

    def _completed(
        self,
        agent: Agent[Any, Any],
        events: TaskEvents,
        finish: Callable[..., ResultMessage],
        output: Any,
        attempt: int,
    ) -> ResultMessage:
        out_type = agent.output_type
        try:
            if out_type not in _ANY_OUTPUT and not (
                isinstance(out_type, type) and isinstance(output, out_type)
            ):
                output = msgspec.convert(output, out_type, from_attributes=True)
            raw = encode_raw(output)
        except msgspec.ValidationError as exc:
            error = ErrorInfo(
                type="OutputValidationError",
                message=f"agent {agent.name!r} returned a value that does not match its "
                f"declared output type: {exc}",
                retryable=False,
            )
            return self._failed(events, finish, error, attempt)
        except EncodeError as exc:
            error = ErrorInfo(type="EncodeError", message=str(exc), retryable=False)
            return self._failed(events, finish, error, attempt)
        if events.wanted:
            events.publish("task.completed", {"attempt": attempt})
        return finish("ok", output=raw, attempt=attempt)

    @staticmethod
    def _failed(
        events: TaskEvents,
        finish: Callable[..., ResultMessage],
        error: ErrorInfo,
        attempt: int,
    ) -> ResultMessage:
        events.publish(
            "task.failed",
            {"attempt": attempt, "error": error.type, "message": error.message[:500]},
            always=True,
        )
        return finish("error", error=error, attempt=attempt)


def _error_info(exc: BaseException, retryable: bool) -> ErrorInfo:
    if isinstance(exc, AgentError):
        return ErrorInfo(type=exc.type, message=str(exc), retryable=exc.retryable)
    message = str(exc) or repr(exc)
    return ErrorInfo(type=type(exc).__name__, message=message[:2000], retryable=retryable)


async def _finished_within(inner: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait for ``inner`` at most ``timeout`` seconds without cancelling it.

    ``asyncio.wait`` does the same with a set, a waiter per call and callbacks on both
    sides; this is on the path of every task, so it does only what is needed. An outer
    cancellation cancels the handler too.
    """
    if inner.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    inner.add_done_callback(wake)
    timer = loop.call_later(timeout, wake) if timeout is not None else None
    try:
        await waiter
    except asyncio.CancelledError:
        inner.cancel()
        raise
    finally:
        if timer is not None:
            timer.cancel()
        inner.remove_done_callback(wake)
    return inner.done()
