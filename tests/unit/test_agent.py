"""``@agent``: names, signatures, types and validation of its options."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from murmur import TaskContext, agent
from murmur.errors import ConfigurationError


def test_bare_and_configured() -> None:
    @agent
    async def summarize(doc: dict[str, str]) -> int:
        """Summarize a document.

        Long description."""
        return 1

    assert summarize.name == "summarize" and summarize.input_type == dict[str, str]
    assert summarize.output_type is int and summarize.description == "Summarize a document."

    @agent(name="sum-v2", timeout=5, retries=2)
    def other(x: int, ctx: TaskContext) -> None:
        return None

    assert other.name == "sum-v2" and other.timeout == 5 and other.retry.retries == 2
    assert other.takes_context and not other.is_async and other.output_type is None


def test_calling_an_agent_calls_the_function() -> None:
    @agent
    def double(x: int) -> int:
        return 2 * x

    assert double(21) == 42


def test_signature_variants() -> None:
    @agent
    async def no_args() -> int:
        return 1

    @agent
    async def ctx_first(ctx: TaskContext, x: int) -> int:
        return x

    @agent
    async def untyped(x, ctx):  # type: ignore[no-untyped-def]
        return x

    assert no_args.input_type is Any and not no_args.takes_context
    assert ctx_first.takes_context and ctx_first.input_type is int
    assert untyped.takes_context and untyped.input_type is Any


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"retries": -1},
        {"retry_on": ("x",)},
        {"name": "a.b"},
        {"name": "results"},
    ],
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):

        @agent(**kwargs)
        async def f(x: int) -> int:
            return x


def test_local_types_resolve_under_future_annotations() -> None:
    class Local(msgspec.Struct):
        x: int

    @agent
    async def bare(v: Local) -> Local:
        return v

    @agent(name="configured")
    async def configured(v: Local) -> int:
        return v.x

    assert bare.input_type is Local and bare.output_type is Local
    assert configured.input_type is Local


def test_unresolvable_hints_are_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="cannot resolve the type hints"):

        @agent
        async def f(x: Missing) -> int:  # type: ignore[name-defined]  # noqa: F821
            return 1


def test_bad_signature() -> None:
    with pytest.raises(ConfigurationError, match="must take"):

        @agent
        async def two_inputs(a: int, b: int) -> int:
            return a + b


class Opaque:
    pass


def test_object_means_any_json() -> None:
    @agent
    async def loose(x: dict[str, object]) -> dict[str, object]:
        return x

    assert loose.output_type == dict[str, object]


def test_unsupported_nested_type() -> None:
    with pytest.raises(ConfigurationError, match="Opaque"):

        @agent
        async def f(x: int) -> list[Opaque]:
            return []


def test_unsupported_input_type() -> None:
    with pytest.raises(ConfigurationError, match="not supported"):

        @agent
        async def f(x: Opaque) -> int:
            return 1
