"""Events out of the runtime: an emitter chain that observability can never break.

Every event goes to the emitter's sinks (the structlog sink always); a task whose
publisher asked for events also has a broker sink, bound per task through a contextvar so
concurrent tasks never see each other's. A failing sink is counted and ignored.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import Any

import structlog

from murmur.logs import debug_enabled
from murmur.messages.envelopes import RuntimeEvent

EventSink = Callable[[RuntimeEvent], None]

# The broker sink of the task running in this context (None: no events_topic).
task_sink: ContextVar[EventSink | None] = ContextVar("murmur_task_sink", default=None)

_WARN = frozenset({"task.failed", "task.rejected", "task.dead_lettered"})
_INFO = frozenset({"worker.started", "worker.stopped", "task.retrying"})
_WORKER_FIELDS = ("worker_id", "host", "pid", "agents", "processed", "failed", "uptime_s")


class LogSink:
    """Writes events to structlog. Custom event data is not logged, only its keys:
    handlers may put anything in it, and task data must not reach the logs."""

    def __init__(self, logger: Any = None, *, lifecycle: bool = False) -> None:
        self.log = logger or structlog.get_logger("murmur.events")
        # Per-task lifecycle events are debug chatter; building them costs time on the
        # hot path, so the runtime skips them unless some sink wants them.
        self.wants_lifecycle = lifecycle or debug_enabled()

    def __call__(self, event: RuntimeEvent) -> None:
        payload = event.payload
        fields: dict[str, Any] = {}
        if event.task_id is not None:
            fields["task_id"] = event.task_id
            fields["agent"] = event.agent
        if event.type.startswith("worker."):
            if isinstance(payload, dict):
                fields.update({k: payload.get(k) for k in _WORKER_FIELDS if k in payload})
        elif event.type.startswith("task."):
            if isinstance(payload, dict):
                fields.update(payload)
        elif isinstance(payload, dict):
            fields["payload_keys"] = sorted(payload)
        if event.type in _WARN:
            self.log.warning(event.type, **fields)
        elif event.type in _INFO:
            self.log.info(event.type, **fields)
        elif self.wants_lifecycle:
            self.log.debug(event.type, **fields)


class Emitter:
    """Fans events out to sinks and counts (never raises) sink failures."""

    __slots__ = ("failures", "sinks", "wants_lifecycle")

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks: list[EventSink] = list(sinks)
        self.failures = 0
        self.wants_lifecycle = any(getattr(s, "wants_lifecycle", True) for s in self.sinks)

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)
        self.wants_lifecycle = self.wants_lifecycle or getattr(sink, "wants_lifecycle", True)

    def emit(self, event: RuntimeEvent) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                self.failures += 1
        bound = task_sink.get()
        if bound is not None:
            try:
                bound(event)
            except Exception:
                self.failures += 1


class TaskEvents:
    """One task's event stream: numbered in order, safe to call from a handler's thread."""

    __slots__ = (
        "_emitter",
        "_loop",
        "_loop_thread",
        "_seq",
        "agent",
        "request_id",
        "task_id",
        "wanted",
        "worker_id",
    )

    def __init__(
        self,
        emitter: Emitter,
        *,
        task_id: str,
        agent: str,
        worker_id: str,
        request_id: str | None,
        loop: Any,
    ) -> None:
        self._emitter = emitter
        self.task_id = task_id
        self.agent = agent
        self.worker_id = worker_id
        self.request_id = request_id
        self._seq = 0
        self._loop = loop
        self._loop_thread = threading.get_ident()
        # Lifecycle events only when someone listens: a log sink at debug or a broker sink.
        self.wanted = emitter.wants_lifecycle or task_sink.get() is not None

    def publish(self, type: str, payload: Any = None, *, always: bool = False) -> None:
        if not (always or self.wanted):
            return
        if threading.get_ident() != self._loop_thread:
            # From a sync handler's worker thread: hop onto the loop to keep order and
            # keep sinks single-threaded.
            self._loop.call_soon_threadsafe(self.publish, type, payload)
            return
        self._seq += 1
        self._emitter.emit(
            RuntimeEvent(
                type=type,
                task_id=self.task_id,
                agent=self.agent,
                worker_id=self.worker_id,
                request_id=self.request_id,
                ts=time.time_ns() // 1_000_000,
                seq=self._seq,
                payload=payload,
            )
        )
