"""Start a handler's coroutine at once, and make it a task only if it has to wait.

The runtime runs each handler apart from the task that called it, so a handler that
ignores cancellation can be left behind at its timeout. But a task costs (creation,
registration, a turn of the loop before it starts) and many handlers never wait: a no-op
or a quick computation finishes in its first step. Running that first step inline was a
tenth of a worker's CPU on no-op tasks. Python 3.12's eager tasks do exactly this; on
3.11 a small driver hands a coroutine suspended in its first step over to a task.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


def start_eagerly(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` until it first waits; a done future if it never does, else a task."""
    loop = asyncio.get_running_loop()
    if not isinstance(coro, types.CoroutineType):  # an awaitable of another kind
        return asyncio.ensure_future(coro)
    if sys.version_info >= (3, 12):
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    context = contextvars.copy_context()  # as a task would run it: in a copy
    try:
        yielded = context.run(coro.send, None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        failed: asyncio.Future[T] = loop.create_future()
        if isinstance(exc, asyncio.CancelledError):
            failed.cancel()
        else:
            failed.set_exception(exc)
        return failed
    return loop.create_task(_resume(coro, yielded), context=context)


async def _resume(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    return await _drive(coro, yielded)  # type: ignore[no-any-return]


@types.coroutine
def _drive(coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
    """Carry on where the inline first step stopped: pass what the task sends or throws
    to ``coro`` and yield what ``coro`` yields (the future it awaits, or None for a bare
    ``sleep(0)``), exactly as if the task had driven ``coro`` from the start."""
    while True:
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(value)
            except StopIteration as stop:
                return stop.value
