"""start_eagerly behaves like a task, minus the task for handlers that never wait."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from murmur.runtime.eager import start_eagerly

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


async def test_a_coroutine_that_never_waits_is_done_at_once() -> None:
    async def quick() -> int:
        return 7

    fut = start_eagerly(quick())
    assert fut.done() and fut.result() == 7
    assert not isinstance(fut, asyncio.Task) or fut.done()


async def test_errors_in_the_first_step_land_in_the_future() -> None:
    async def bad() -> None:
        raise ValueError("no")

    fut = start_eagerly(bad())
    with pytest.raises(ValueError, match="no"):
        await fut


async def test_a_coroutine_that_waits_carries_on_as_a_task() -> None:
    steps: list[str] = []
    gate = asyncio.Event()

    async def slow() -> str:
        steps.append("first")  # runs before start_eagerly returns
        await asyncio.sleep(0)  # a bare yield
        steps.append("second")
        await gate.wait()  # a real future
        return "done"

    fut = start_eagerly(slow())
    assert steps == ["first"] and not fut.done()
    await asyncio.sleep(0.01)
    assert steps == ["first", "second"] and not fut.done()
    gate.set()
    assert await fut == "done"


async def test_cancelling_reaches_the_coroutine() -> None:
    seen: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    fut = start_eagerly(waits())
    await asyncio.sleep(0)
    fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    assert seen == ["cancelled"]


async def test_a_coroutine_can_swallow_the_cancel_and_finish() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
            return "finished anyway"
        return "slept"

    fut = start_eagerly(stubborn())
    await asyncio.sleep(0)
    fut.cancel()
    await asyncio.wait([fut])
    assert fut.result() == "finished anyway"


async def test_context_changes_stay_inside_the_handler() -> None:
    async def sets() -> str:
        var.set("inner")
        await asyncio.sleep(0)
        return var.get()

    assert await start_eagerly(sets()) == "inner"
    assert var.get() == "outer"

    async def sets_quickly() -> str:
        var.set("inner")
        return var.get()

    assert start_eagerly(sets_quickly()).result() == "inner"
    assert var.get() == "outer"
