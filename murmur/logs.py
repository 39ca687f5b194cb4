"""structlog setup for murmur processes: JSON or console lines on stderr.

Libraries should not configure logging on import, so this runs only where murmur owns the
process (the CLI, worker subprocesses). Noisy transport loggers (FastStream, aiokafka,
nats) are held at WARNING: murmur's own lines say what matters.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from murmur.config import LOG_FORMAT, LOG_LEVEL
from murmur.errors import ConfigurationError

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_NOISY = ("faststream", "aiokafka", "kafka", "nats", "redis", "asyncio")
_level = logging.INFO


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is now, not the one current at configure time.

    Test runners and daemonisers swap stderr; a logger bound to a closed stream would turn
    every log line into a crash.
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = msg


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdlib handler resolving ``sys.stderr`` per record, for the same reason."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _stderr_logger(*_args: Any) -> _StderrLogger:
    return _STDERR_LOGGER


_STDERR_LOGGER = _StderrLogger()


def debug_enabled() -> bool:
    """Whether debug lines are wanted (per-task lifecycle events cost time to build)."""
    return _level <= logging.DEBUG


def configure_logging(format: str | None = None, level: str | None = None) -> None:
    """Configure structlog (and stdlib logging) for this process."""
    global _level
    fmt = (format or os.environ.get(LOG_FORMAT) or "").strip().lower()
    if not fmt:
        fmt = "console" if sys.stderr.isatty() else "json"
    if fmt not in ("json", "console"):
        raise ConfigurationError(f"log format must be 'json' or 'console', got {fmt!r}")
    lvl = (level or os.environ.get(LOG_LEVEL) or "info").strip().lower()
    if lvl not in _LEVELS:
        raise ConfigurationError(f"log level must be one of {', '.join(_LEVELS)}, got {lvl!r}")
    _level = _LEVELS[lvl]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(_level, logging.WARNING), handlers=[_StderrHandler()], force=True)
    logging.getLogger("murmur").setLevel(_level)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(_level, logging.WARNING))
