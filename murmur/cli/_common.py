"""What every command shares: exit codes, the one-line error policy, options, formatting.

Errors reach the user as one line on stderr and an exit code; the traceback only with
``--debug``. Exit codes are the same for every command:

    0 ok · 1 failure (task error or rejected, broker unreachable, ...) · 2 usage or
    configuration (bad flag, bad JSON, bad URL, unknown agent, APP not loadable) · 3 timeout
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import os
import sys
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from murmur.brokers.base import Broker, Message
from murmur.brokers.urls import broker_kind, redact
from murmur.config import BROKER_URL, LOG_LEVEL
from murmur.errors import BrokerUnavailable, ConfigurationError, MurmurError
from murmur.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

err_console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)


def _passthrough() -> tuple[type[BaseException], ...]:
    """Exceptions typer/click turn into exits and usage messages themselves.

    typer >= 0.20 vendors click (its exceptions derive from ``typer.TyperException``);
    older typer uses the real click package. Handle both without importing click.
    """
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    kinds += [k for k in (getattr(typer, "TyperException", None),) if isinstance(k, type)]
    try:
        click = importlib.import_module("click")
    except ImportError:
        pass
    else:
        kinds += [click.exceptions.Exit, click.ClickException, click.Abort]
    return tuple(kinds)


_PASSTHROUGH = _passthrough()


def from_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given as a flag (not from the environment or default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


class CliError(Exception):
    """An error the command reports as one line and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def note(message: str) -> None:
    """A status line for humans on stderr (stdout stays clean for pipes)."""
    err_console.print(message, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    raise CliError(message, code)


def _code_for(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, ConfigurationError):
        return EXIT_USAGE, str(exc)
    if isinstance(exc, BrokerUnavailable):
        return EXIT_FAILURE, f"broker unavailable: {exc}"
    if isinstance(exc, MurmurError):
        return EXIT_FAILURE, str(exc)
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT, str(exc) or "timed out"
    return EXIT_FAILURE, f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"


@contextlib.contextmanager
def cli_errors(debug: bool = False) -> Iterator[None]:
    """Turn any exception into one stderr line and a ``typer.Exit`` with its code."""
    try:
        yield
    except _PASSTHROUGH:
        raise
    except KeyboardInterrupt:
        note("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        code, message = _code_for(exc)
        if debug:
            traceback.print_exception(exc)
        error_line(message)
        raise typer.Exit(code) from None


def quiet_logging(debug: bool = False) -> None:
    """Client-side commands log warnings only (unless MURMUR_LOG_LEVEL says otherwise)."""
    level = "debug" if debug else (os.environ.get(LOG_LEVEL) or "warning")
    configure_logging(level=level)


# options shared by several commands ----------------------------------------------------

BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        envvar=BROKER_URL,
        show_envvar=True,
        metavar="URL",
        help="Broker URL: redis://host:6379, rediss://..., nats://host:4222, kafka://host:9092.",
    ),
]
DebugOpt = Annotated[
    bool, typer.Option("--debug", help="Show tracebacks and debug logs when something fails.")
]


def remote_broker_url(url: str | None) -> str:
    """The broker URL a command that talks to *other* processes can use."""
    if not url:
        fail(
            f"no broker: pass --broker redis://localhost:6379 (or nats://, kafka://) "
            f"or set {BROKER_URL}",
            EXIT_USAGE,
        )
    if broker_kind(url) == "memory":
        fail(
            "memory:// lives inside one process, so this command cannot reach it; "
            "use redis://, nats:// or kafka://",
            EXIT_USAGE,
        )
    return url


def split_names(value: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def display(url: str) -> str:
    return redact(url)


# reading stored topics -----------------------------------------------------------------


async def read_pages(
    broker: Broker,
    topic: str,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    page: int = 1000,
) -> AsyncIterator[list[Message]]:
    """Every message stored on ``topic`` (oldest first) in pages, beyond one ``read`` limit.

    ``Broker.read`` pages only by time, so the cursor is the last timestamp seen and ids
    already returned at that millisecond are skipped; a page that holds nothing new (a
    burst stored within one millisecond) is read again, larger. Messages stored after
    ``until_ms`` are left out (a replay must not chase the dead letters it causes).
    """
    cursor, limit = since_ms, page
    at_cursor: set[str] = set()
    while True:
        batch = await broker.read(topic, since_ms=cursor, limit=limit)
        fresh = [m for m in batch if m.id not in at_cursor]
        done = len(batch) < limit
        if until_ms is not None:
            kept = [m for m in fresh if not m.timestamp_ms or m.timestamp_ms <= until_ms]
            done = done or len(kept) < len(fresh)
            fresh = kept
        if fresh:
            yield fresh
        last = batch[-1].timestamp_ms if batch else 0
        if done or last <= 0:  # the end, or a broker that cannot page by time
            return
        if not fresh:
            limit *= 2
            continue
        limit = page
        if last != cursor:
            at_cursor = set()
        at_cursor.update(m.id for m in batch if m.timestamp_ms == last)
        cursor = last


# formatting -----------------------------------------------------------------------------


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    if s < 60:
        return f"{s:.0f}s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def iso_ms(ms: int | None) -> str:
    if not ms:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
