"""call_inline: a handler run in the caller's task behaves as if it had a task of its own."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from murmur.runtime.inline import HandlerTimeout, call_inline

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")


async def test_values_and_errors_come_back() -> None:
    async def quick() -> int:
        return 7

    async def waits() -> int:
        await asyncio.sleep(0)  # a bare yield
        await asyncio.sleep(0.01)  # a real future
        return 8

    async def bad() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("no")

    assert await call_inline(quick(), 1.0, 1.0) == 7
    assert await call_inline(waits(), 1.0, 1.0) == 8
    assert await call_inline(waits(), None, 1.0) == 8
    with pytest.raises(ValueError, match="no"):
        await call_inline(bad(), 1.0, 1.0)


async def test_a_handlers_own_timeout_error_is_not_a_deadline() -> None:
    async def own() -> None:
        raise TimeoutError("upstream timed out")

    with pytest.raises(TimeoutError, match="upstream"):
        await call_inline(own(), 5.0, 1.0)


async def test_the_deadline_cancels_the_handler() -> None:
    seen: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    with pytest.raises(HandlerTimeout) as info:
        await call_inline(slow(), 0.05, 1.0)
    assert seen == ["cancelled"] and not info.value.abandoned
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_late_return_after_the_deadline_is_still_a_timeout() -> None:
    async def sulks() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)
        return "late"

    with pytest.raises(HandlerTimeout) as info:
        await call_inline(sulks(), 0.05, 1.0)
    assert not info.value.abandoned


async def test_a_handler_that_ignores_cancellation_is_left_behind_running() -> None:
    stop = asyncio.Event()
    ticks: list[int] = []

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.01)
                ticks.append(1)
            except asyncio.CancelledError:
                continue

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(HandlerTimeout) as info:
        await call_inline(stubborn(), 0.05, 0.1)
    assert info.value.abandoned
    assert loop.time() - t0 < 1.0
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    before = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) > before  # still running, on its own task
    stop.set()
    await asyncio.sleep(0.05)


async def test_cancelling_the_caller_propagates() -> None:
    started = asyncio.Event()
    seen: list[str] = []

    async def long() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    task = asyncio.create_task(call_inline(long(), 5.0, 1.0))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled"]


async def test_cancelling_the_caller_of_a_stubborn_handler_ends_after_the_grace() -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(call_inline(stubborn(), None, 0.1))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    stop.set()
    await asyncio.sleep(0.05)


async def test_context_changes_stay_inside_the_handler() -> None:
    async def sets() -> str:
        var.set("inner")
        await asyncio.sleep(0)
        return var.get()

    assert await call_inline(sets(), 1.0, 1.0) == "inner"
    assert var.get() == "outer"
