"""What a handler sees of the task it runs: ids, deadline, a logger and an event channel."""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from murmur.runtime.events import TaskEvents

_RESERVED_PREFIXES = ("task.", "worker.")
_LOG = structlog.get_logger("murmur.runtime")


class _Sent:
    """Result of ``progress``/``emit``: awaitable for async handlers, ignorable in sync ones.

    Events are queued, not sent inline, so both ``await ctx.progress(...)`` and a bare
    ``ctx.progress(...)`` in a thread are correct and neither blocks the handler.
    """

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_SENT = _Sent()


class TaskContext:
    """Per-attempt context passed to handlers that declare a ``ctx: TaskContext`` parameter.

    ``deadline`` is a Unix timestamp (seconds); ``remaining`` is what is left of it.
    ``delivery_count`` tells how many times the broker handed this task out.
    """

    __slots__ = (
        "_events",
        "_log",
        "agent",
        "attempt",
        "deadline",
        "delivery_count",
        "request_id",
        "task_id",
        "worker_id",
    )

    def __init__(
        self,
        *,
        task_id: str,
        agent: str,
        attempt: int,
        delivery_count: int,
        deadline: float | None,
        request_id: str,
        worker_id: str,
        events: TaskEvents,
        log: Any = None,
    ) -> None:
        self.task_id = task_id
        self.agent = agent
        self.attempt = attempt
        self.delivery_count = delivery_count
        self.deadline = deadline
        self.request_id = request_id
        self.worker_id = worker_id
        self._log = log
        self._events = events

    @property
    def log(self) -> Any:
        """A structlog logger bound to this task's id, agent and attempt.

        Bound on first use: most handlers never log, and binding for every task was a
        measurable share of the worker's per-task cost.
        """
        if self._log is None:
            self._log = _LOG.bind(task_id=self.task_id, agent=self.agent, attempt=self.attempt)
        return self._log

    @property
    def remaining(self) -> float | None:
        """Seconds left before the task times out (None: no timeout)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.time())

    def progress(self, fraction: float, message: str | None = None) -> _Sent:
        """Report progress in [0, 1] to the publisher (a ``task.progress`` event)."""
        fraction = min(1.0, max(0.0, float(fraction)))
        self._events.publish("task.progress", {"fraction": fraction, "message": message})
        return _SENT

    def emit(self, name: str, data: Any = None) -> _Sent:
        """Send a custom event named ``name`` with JSON-able ``data`` to the publisher."""
        if not isinstance(name, str) or not name or name.startswith(_RESERVED_PREFIXES):
            raise ValueError(
                f"custom event name {name!r} must be a non-empty string not starting with "
                "'task.' or 'worker.'"
            )
        self._events.publish(name, data)
        return _SENT

    def __repr__(self) -> str:
        return f"<TaskContext {self.agent}/{self.task_id} attempt={self.attempt}>"
