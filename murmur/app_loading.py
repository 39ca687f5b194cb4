"""Resolve the ``APP`` argument of ``murmur worker`` into agents or a configured Worker.

``APP`` is ``module:attribute`` (an agent, a list/tuple/dict of agents, or a ``Worker``)
or a bare ``module`` whose module-level ``@agent`` objects are discovered. As with
uvicorn, the current directory is importable, so ``murmur worker app`` finds ``./app.py``.
Every failure is an :class:`AppLoadError` with a message that says how to fix it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from murmur.errors import ConfigurationError
from murmur.runtime.agent import Agent
from murmur.worker import Worker

AgentLike = Agent[Any, Any]


class AppLoadError(ConfigurationError):
    """``APP`` cannot be imported or does not name agents (exit code 2 in the CLI)."""


@dataclass(frozen=True, slots=True)
class LoadedApp:
    """What ``APP`` named: agents by the name their topic uses, or a ready Worker."""

    spec: str
    agents: dict[str, Any]  # name -> Agent (or a plain function from a seed-style dict)
    worker: Worker | None = None


def ensure_cwd_importable() -> None:
    """Put the current directory first on ``sys.path`` (``python -m`` does not)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_app(spec: str) -> LoadedApp:
    """Import ``spec`` and return the agents (or Worker) it names."""
    spec = spec.strip()
    module_name, _, attr = spec.partition(":")
    if not module_name or (":" in spec and not attr):
        raise AppLoadError(
            f"APP {spec!r} is not 'module' or 'module:attribute' (e.g. 'app' or 'app:agents')"
        )
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        dotted = module_name.removesuffix(".py").replace("/", ".").replace(os.sep, ".")
        raise AppLoadError(
            f"APP {spec!r} looks like a file path; use the module name instead, e.g. {dotted!r}"
        )
    ensure_cwd_importable()
    module = _import(module_name)
    if not attr:
        return LoadedApp(spec, _discover(module))
    value = _getattr_path(module, attr, spec)
    if isinstance(value, Worker):
        return LoadedApp(spec, dict(value.agents), worker=value)
    return LoadedApp(spec, _coerce(value, spec))


def select_agents(app: LoadedApp, names: Sequence[str]) -> dict[str, Any]:
    """The subset of ``app``'s agents named in ``names`` (all when empty)."""
    if not names:
        return dict(app.agents)
    unknown = [n for n in names if n not in app.agents]
    if unknown:
        raise AppLoadError(
            f"unknown agent{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"in --agents; {app.spec!r} has: {', '.join(app.agents)}"
        )
    return {n: app.agents[n] for n in dict.fromkeys(names)}


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == name or name.startswith(missing + "."):
            raise AppLoadError(
                f"cannot import {name!r}: no module named {missing!r} "
                f"(looked in the current directory {os.getcwd()} and sys.path)"
            ) from exc
        raise AppLoadError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc
    except ConfigurationError as exc:  # e.g. a Worker(...) at import time without a broker
        raise AppLoadError(f"importing {name!r} failed: {exc}") from exc
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppLoadError(f"importing {name!r} failed: {type(exc).__name__}: {exc}") from exc


def _getattr_path(module: ModuleType, path: str, spec: str) -> Any:
    value: Any = module
    for part in path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            found = [a.name for a in _module_agents(module)]
            hint = f"; agents found there: {', '.join(found)}" if found else ""
            raise AppLoadError(
                f"{spec!r}: module {module.__name__!r} has no attribute {path!r}{hint}"
            ) from None
    return value


def _module_agents(module: ModuleType) -> list[AgentLike]:
    seen: dict[int, AgentLike] = {}
    for value in vars(module).values():
        if isinstance(value, Agent):
            seen.setdefault(id(value), value)
    return list(seen.values())


def _discover(module: ModuleType) -> dict[str, Any]:
    found = _module_agents(module)
    if not found:
        workers = [k for k, v in vars(module).items() if isinstance(v, Worker)]
        hint = (
            f"; it defines a Worker, use '{module.__name__}:{workers[0]}'"
            if workers
            else "; decorate async functions with @agent at module level, "
            "or name them as 'module:attribute'"
        )
        raise AppLoadError(f"no agents found in module {module.__name__!r}{hint}")
    return _by_name(found, module.__name__)


def _coerce(value: Any, spec: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AppLoadError(f"{spec!r}: dict keys must be agent names, got {key!r}")
            out[key] = _one(item, spec)
        if not out:
            raise AppLoadError(f"{spec!r} is an empty dict: a worker needs at least one agent")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = [_one(v, spec) for v in value]
        if not items:
            raise AppLoadError(f"{spec!r} is empty: a worker needs at least one agent")
        return _by_name(items, spec)
    return _by_name([_one(value, spec)], spec)


def _one(value: Any, spec: str) -> AgentLike:
    if isinstance(value, Agent):
        return value
    if inspect.isfunction(value):  # the seed API accepted plain handlers
        try:
            return Agent(value)
        except ConfigurationError as exc:
            raise AppLoadError(f"{spec!r}: {exc}") from exc
    raise AppLoadError(
        f"{spec!r} names a {type(value).__name__}, not an agent: expected an @agent function, "
        "a list or dict of agents, or a Worker"
    )


def _by_name(items: Sequence[AgentLike], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in items:
        if a.name in out and out[a.name] is not a:
            raise AppLoadError(f"{where!r}: two agents are named {a.name!r}")
        out[a.name] = a
    return out
