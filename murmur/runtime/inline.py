"""Run an async handler inside the calling task, under a deadline.

A task per handler looks simpler but costs on every task: creating and registering it, a
waiter to race it against the deadline, and two extra turns of the event loop between the
handler finishing and the worker noticing. Turns of a busy loop are what keep a slot idle
between I/O-bound tasks, and a handler that never waits paid for a task it did not need.

A plain ``await`` under ``asyncio.timeout`` has one flaw: a handler that swallows the
cancellation at its deadline would hold the caller until it chooses to end. So the
handler is driven here step by step, exactly as a task would drive it (each step in one
copy of the caller's context), and a handler still running ``grace`` seconds after it was
cancelled is left behind: it carries on as a task of its own and the caller moves on.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar, cast

T = TypeVar("T")


class HandlerTimeout(Exception):
    """The handler overran its timeout; ``abandoned``: it ignored cancellation and was
    left running on its own."""

    def __init__(self, abandoned: bool) -> None:
        super().__init__("handler timed out")
        self.abandoned = abandoned


async def call_inline(coro: Coroutine[Any, Any, T], timeout: float | None, grace: float) -> T:
    """Await ``coro`` in this task; :class:`HandlerTimeout` once ``timeout`` s pass."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    driver = _Driver(coro, grace)
    if driver.first_step():  # it never waited: no deadline to arm
        return driver.value
    if timeout is None:
        return await driver
    try:
        async with asyncio.timeout_at(started + timeout) as deadline:
            value = await driver
    except Exception:
        if deadline.expired():  # whatever the handler raised while being cancelled
            raise HandlerTimeout(driver.abandoned) from None
        raise
    if deadline.expired():  # it swallowed the cancellation and returned late
        raise HandlerTimeout(driver.abandoned)
    return value


class _Driver(Generic[T]):
    __slots__ = (
        "_context",
        "_coro",
        "_give_up",
        "_grace",
        "_timer",
        "_yielded",
        "abandoned",
        "value",
    )

    def __init__(self, coro: Coroutine[Any, Any, T], grace: float) -> None:
        self._coro = coro
        self._context = contextvars.copy_context()
        self._grace = grace
        self._timer: asyncio.TimerHandle | None = None
        self._give_up = False
        self._yielded: Any = None
        self.abandoned = False
        self.value: T

    def first_step(self) -> bool:
        """Run the handler up to its first wait; True if it finished there (``value``)."""
        try:
            self._yielded = self._context.run(self._coro.send, None)
        except StopIteration as stop:
            self.value = stop.value
            return True
        return False

    def __await__(self) -> Generator[Any, Any, T]:
        yielded, self._yielded = self._yielded, None
        try:
            value = yield from _steps(self._coro, self._context, yielded, self._cancelled)
        finally:
            if self._timer is not None:
                self._timer.cancel()
        return cast(T, value)

    def _cancelled(self, exc: BaseException) -> None:
        """A cancellation is about to reach the handler: past the grace, leave it behind
        (re-raising here ends the drive), else start the grace."""
        if self._give_up:
            self._leave_behind(exc)
            raise exc
        self._arm()

    def _arm(self) -> None:
        """Cancelled (deadline or caller): give the handler ``grace`` seconds to end."""
        if self._timer is None:
            task = asyncio.current_task()
            assert task is not None
            self._timer = asyncio.get_running_loop().call_later(self._grace, self._expire, task)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        self._give_up = True
        task.cancel()

    def _leave_behind(self, exc: BaseException) -> None:
        # The cancel that woke us was our own (_expire): take it back, so the caller's
        # asyncio.timeout or canceller sees only its own.
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
        self.abandoned = True
        orphan = asyncio.get_running_loop().create_task(_carry_on(self._coro, self._context, exc))
        orphan.add_done_callback(consume_exception)


async def _carry_on(coro: Coroutine[Any, Any, Any], context: contextvars.Context, exc: Any) -> Any:
    """Drive an abandoned handler on its own task, starting with the cancellation it was
    about to receive."""
    try:
        yielded = context.run(coro.throw, exc)
    except StopIteration as stop:
        return stop.value
    return await _steps(coro, context, yielded)


@types.coroutine
def _steps(
    coro: Coroutine[Any, Any, Any],
    context: contextvars.Context,
    yielded: Any,
    on_cancel: Callable[[BaseException], None] | None = None,
) -> Generator[Any, Any, Any]:
    """Drive ``coro`` from a point where it yielded ``yielded``, as a task would: pass what
    the task sends or throws in (``on_cancel`` sees a cancellation first), each step in
    ``context``; return what ``coro`` returns."""
    run = context.run
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            if on_cancel is not None and isinstance(exc, asyncio.CancelledError):
                on_cancel(exc)
            try:
                yielded = run(coro.throw, exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = run(coro.send, value)
            except StopIteration as stop:
                return stop.value


def consume_exception(fut: asyncio.Future[Any]) -> None:
    """Done callback for a future nobody awaits: its exception is no error to log."""
    if not fut.cancelled():
        fut.exception()
