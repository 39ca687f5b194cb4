"""``@agent`` and :class:`Agent`: a handler plus the facts the runtime needs to run it.

Input and output types come from the handler's type hints, so a publisher's JSON is
validated by msgspec before the handler sees it and the handler's return value is checked
before it is published. Any type msgspec understands works: Structs, dataclasses,
TypedDicts, attrs classes and builtins.
"""

from __future__ import annotations

import inspect
import sys
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import msgspec

from murmur.errors import ConfigurationError
from murmur.messages.topics import validate_agent_name
from murmur.runtime.context import TaskContext
from murmur.runtime.retry import RetryPolicy

InT = TypeVar("InT")
OutT = TypeVar("OutT")

DEFAULT_TIMEOUT = 300.0

Handler = Callable[..., Any]


def _is_context_param(param: inspect.Parameter, hint: Any) -> bool:
    if hint is TaskContext:
        return True
    return hint is inspect.Parameter.empty and param.name in ("ctx", "context")


@dataclass(frozen=True, slots=True)
class _Signature:
    input_type: Any
    output_type: Any
    takes_input: bool
    takes_context: bool
    context_first: bool


def _inspect(fn: Handler, localns: dict[str, Any] | None = None) -> _Signature:
    try:
        hints = typing.get_type_hints(fn, localns=localns, include_extras=True)
    except Exception as exc:  # unresolvable forward references
        raise ConfigurationError(
            f"cannot resolve the type hints of {fn.__qualname__}: {exc}; "
            "define the input/output types before the agent"
        ) from exc
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    ctx_params = [p for p in params if _is_context_param(p, hints.get(p.name, p.empty))]
    data_params = [p for p in params if p not in ctx_params]
    if len(ctx_params) > 1 or len(data_params) > 1:
        raise ConfigurationError(
            f"agent handler {fn.__qualname__} must take (input) or (input, ctx: TaskContext); "
            f"got ({', '.join(p.name for p in params)})"
        )
    input_type: Any = Any
    if data_params:
        input_type = hints.get(data_params[0].name, Any)
    output_type: Any = hints.get("return", Any)
    origin = typing.get_origin(output_type)
    if origin is not None and origin in (Awaitable, typing.Coroutine):
        output_type = typing.get_args(output_type)[-1]
    if output_type is type(None):
        output_type = None
    return _Signature(
        input_type=input_type,
        output_type=output_type,
        takes_input=bool(data_params),
        takes_context=bool(ctx_params),
        context_first=bool(ctx_params) and bool(data_params) and params[0] is ctx_params[0],
    )


def _unsupported(t: Any) -> type | None:
    """The first class inside ``t`` that JSON cannot carry (``object`` means any JSON)."""
    seen: set[int] = set()
    stack: list[Any] = [msgspec.inspect.type_info(t)]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, msgspec.inspect.CustomType):
            if node.cls is not object:
                return node.cls
            continue
        for value in vars(node).values() if hasattr(node, "__dict__") else _fields(node):
            if isinstance(value, msgspec.inspect.Type):
                stack.append(value)
            elif isinstance(value, tuple):
                stack.extend(v for v in value if isinstance(v, msgspec.inspect.Type))
                stack.extend(f.type for f in value if isinstance(f, msgspec.inspect.Field))
    return None


def _fields(node: Any) -> list[Any]:
    return [getattr(node, name) for name in getattr(node, "__struct_fields__", ())]


def _check_json_type(name: str, role: str, t: Any) -> None:
    """Refuse at definition time a type JSON cannot carry (instead of failing every task)."""
    if t is None or t is Any:
        return
    bad = _unsupported(t)
    if bad is not None:
        raise ConfigurationError(
            f"agent {name!r}: {role} type {t!r} is not supported by msgspec (it contains "
            f"{bad.__qualname__}); use msgspec Structs, dataclasses, TypedDicts or builtins"
        )


class Agent(Generic[InT, OutT]):
    """A named, typed handler with its timeout and retry policy.

    Calling an ``Agent`` calls the handler directly, so agents stay plain functions in unit
    tests. ``timeout`` bounds a task's whole run, retries and backoff included.
    """

    __slots__ = (
        "_decoder",
        "_sig",
        "description",
        "fn",
        "is_async",
        "name",
        "retry",
        "timeout",
    )

    def __init__(
        self,
        fn: Handler,
        *,
        name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        description: str | None = None,
        localns: dict[str, Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@agent needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.name = validate_agent_name(name or fn.__name__)
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(f"agent {self.name!r}: timeout must be > 0 or None")
        self.timeout = timeout
        self.retry = RetryPolicy(
            retries=retries, retry_on=retry_on, backoff=backoff, max_backoff=max_backoff
        )
        self.is_async = inspect.iscoroutinefunction(fn)
        self._sig = _inspect(fn, localns)
        for role, t in (("input", self._sig.input_type), ("output", self._sig.output_type)):
            _check_json_type(self.name, role, t)
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(self._sig.input_type)
        self.description = description or (inspect.getdoc(fn) or "").split("\n\n")[0] or None

    @property
    def input_type(self) -> Any:
        return self._sig.input_type

    @property
    def output_type(self) -> Any:
        return self._sig.output_type

    @property
    def takes_context(self) -> bool:
        return self._sig.takes_context

    def decode_input(self, raw: bytes) -> Any:
        """Validate raw JSON against the input type; raises ``msgspec.ValidationError``."""
        return self._decoder.decode(raw)

    def call(self, value: Any, ctx: TaskContext) -> Any:
        """Invoke the handler with the arguments its signature asks for."""
        sig = self._sig
        if not sig.takes_input:
            return self.fn(ctx) if sig.takes_context else self.fn()
        if not sig.takes_context:
            return self.fn(value)
        return self.fn(ctx, value) if sig.context_first else self.fn(value, ctx)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Agent {self.name!r} timeout={self.timeout} retries={self.retry.retries}>"


@overload
def agent(fn: Handler, /) -> Agent[Any, Any]: ...


@overload
def agent(
    *,
    name: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.2,
    max_backoff: float = 10.0,
    description: str | None = None,
) -> Callable[[Handler], Agent[Any, Any]]: ...


def agent(
    fn: Handler | None = None,
    /,
    *,
    name: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    backoff: float = 0.2,
    max_backoff: float = 10.0,
    description: str | None = None,
) -> Agent[Any, Any] | Callable[[Handler], Agent[Any, Any]]:
    """Turn a function into an :class:`Agent`; usable bare (``@agent``) or with options.

    >>> @agent(name="summarize", timeout=60.0, retries=2)
    ... async def summarize(doc: dict, ctx: TaskContext) -> dict: ...
    """

    def wrap(f: Handler) -> Agent[Any, Any]:
        # Types defined in the decorating scope (a function, a notebook cell) resolve
        # even under `from __future__ import annotations`.
        caller = sys._getframe(2 if fn is not None else 1).f_locals
        return Agent(
            f,
            name=name,
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            backoff=backoff,
            max_backoff=max_backoff,
            description=description,
            localns=dict(caller),
        )

    return wrap(fn) if fn is not None else wrap
