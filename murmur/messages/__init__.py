"""Wire format v1: envelopes, headers, topic names and their codec."""

from murmur.messages import headers
from murmur.messages.codec import decode_event, decode_result, decode_task, encode, now_ms
from murmur.messages.envelopes import (
    WIRE_VERSION,
    ErrorInfo,
    Presence,
    ResultMessage,
    RuntimeEvent,
    TaskMessage,
    WorkerInfo,
)
from murmur.messages.topics import (
    HEARTBEATS,
    PRESENCE,
    dead_topic,
    events_topic,
    group_name,
    results_topic,
    task_topic,
)

__all__ = [
    "HEARTBEATS",
    "PRESENCE",
    "WIRE_VERSION",
    "ErrorInfo",
    "Presence",
    "ResultMessage",
    "RuntimeEvent",
    "TaskMessage",
    "WorkerInfo",
    "dead_topic",
    "decode_event",
    "decode_result",
    "decode_task",
    "encode",
    "events_topic",
    "group_name",
    "headers",
    "now_ms",
    "results_topic",
    "task_topic",
]
