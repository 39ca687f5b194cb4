"""Wire format v1 envelopes (DESIGN §3) as msgspec structs.

Field names are the contract with publishers in other languages; unknown fields are
ignored on decode so the format can grow. ``TaskMessage`` and ``ResultMessage`` are
generic in their payload so the worker can decode ``input`` lazily as ``msgspec.Raw``
(validated once, against the agent's own type) and the client can read ``output``
into the caller's type.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

import msgspec

WIRE_VERSION = 1

TaskId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Status = Literal["ok", "error", "rejected"]

InputT = TypeVar("InputT")


class TaskMessage(msgspec.Struct, Generic[InputT], kw_only=True, gc=False):
    """A unit of work for one agent, published to ``murmur.<agent>.tasks``."""

    v: int = WIRE_VERSION
    task_id: TaskId
    agent: str
    input: InputT
    reply_to: str | None = None
    events_topic: str | None = None
    request_id: str = ""
    created_at: int = 0
    expires_at: int | None = None


class ErrorInfo(msgspec.Struct, kw_only=True, omit_defaults=True, gc=False):
    """Why a task did not produce an output; ``reason`` refines rejections."""

    type: str
    message: str
    retryable: bool
    reason: str | None = None


class ResultMessage(msgspec.Struct, kw_only=True, gc=False):
    """The one answer a publisher gets per task, on its ``reply_to`` topic.

    ``output`` decodes to plain JSON values; ``Client.run(..., output_type=T)`` converts
    it to the caller's type.
    """

    v: int = WIRE_VERSION
    task_id: str
    request_id: str = ""
    agent: str = ""
    status: Status
    output: Any = None
    error: ErrorInfo | None = None
    attempt: int = 1
    worker_id: str = ""
    started_at: int | None = None
    finished_at: int = 0
    duration_ms: float = 0.0
    delivery_count: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class RuntimeEvent(msgspec.Struct, kw_only=True, gc=False):
    """Lifecycle, progress and custom events (DESIGN §5); ``seq`` orders one task's events."""

    v: int = WIRE_VERSION
    type: str
    task_id: str | None = None
    agent: str | None = None
    worker_id: str = ""
    request_id: str | None = None
    ts: int = 0
    seq: int = 0
    payload: Any = None


class WorkerInfo(msgspec.Struct, kw_only=True, gc=False):
    """Payload of ``worker.*`` events: what ``murmur status`` shows for one worker."""

    worker_id: str
    host: str
    pid: int
    agents: list[str]
    version: str
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    uptime_s: float = 0.0
    interval_s: float = 0.0
    concurrency: int = 0
    prefetch: int = 0
    started_at: int = 0


class Presence(WorkerInfo, kw_only=True, gc=False):
    """A worker's presence record (DESIGN §5): its heartbeat payload, when it was written
    (``beat_at``) and when it lapses (``expires_at``, 3 heartbeat periods + 2 s later),
    both unix ms. The broker stops listing it by then; ``murmur status`` reads these."""

    beat_at: int = 0
    expires_at: int = 0
