"""Retry decisions and backoff for one task run, kept inside the task's deadline."""

from __future__ import annotations

import random
from dataclasses import dataclass

from murmur.errors import AgentError, ConfigurationError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    backoff: float = 0.2
    max_backoff: float = 10.0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigurationError("retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError("backoff and max_backoff must be >= 0")
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise ConfigurationError("retry_on must be a tuple of exception types")

    def is_retryable(self, exc: BaseException) -> bool:
        """An ``AgentError`` decides for itself; anything else is retried if listed."""
        if isinstance(exc, AgentError):
            return exc.retryable
        return isinstance(exc, self.retry_on)

    def delay(self, attempt: int) -> float:
        """Exponential backoff with equal jitter after failed attempt number ``attempt``."""
        base = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return base / 2 + random.uniform(0, base / 2)
