"""The exceptions murmur raises, so callers can catch by meaning rather than by module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from murmur.messages.envelopes import ResultMessage


class MurmurError(Exception):
    """Base class of every error murmur raises on purpose."""


class ConfigurationError(MurmurError, ValueError):
    """An argument, URL or environment setting is invalid; the message says how to fix it."""


class BrokerUnavailable(MurmurError, ConnectionError):
    """The broker could not be reached or went away."""


class EncodeError(MurmurError, TypeError):
    """A value cannot be encoded as JSON for the wire."""


class TaskFailed(MurmurError):
    """A task ended with status ``error`` or ``rejected``; carries the structured error.

    Raised by :meth:`murmur.Client.run` so callers can ``except TaskFailed as e`` and read
    ``e.type``, ``e.retryable`` and the full ``e.result``.
    """

    def __init__(self, result: ResultMessage) -> None:
        self.result = result
        err = result.error
        self.status: str = result.status
        self.type: str = err.type if err else "UnknownError"
        self.error_message: str = err.message if err else ""
        self.retryable: bool = err.retryable if err else False
        self.reason: str | None = err.reason if err else None
        super().__init__(
            f"task {result.task_id} {result.status}: {self.type}: {self.error_message}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.result,))


class AgentError(MurmurError):
    """Raise from a handler to fail a task with an explicit type and retry decision.

    Any other exception is retried when it matches the agent's ``retry_on``; this one
    says plainly whether retrying can help.
    """

    def __init__(self, message: str, *, retryable: bool = False, type: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.type = type or "AgentError"
