"""Encoding and decoding of envelopes with encoders and decoders built once.

The worker decodes a task with ``input`` left as raw JSON, so a body is parsed exactly
once and the input is validated against the agent's type only when the agent runs.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from murmur.errors import EncodeError
from murmur.messages.envelopes import (
    WIRE_VERSION,
    ResultMessage,
    RuntimeEvent,
    TaskMessage,
)

# msgspec raises UnicodeDecodeError (not DecodeError) for invalid UTF-8 inside a string.
DecodeError = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)

_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(TaskMessage[msgspec.Raw])
_result_decoder = msgspec.json.Decoder(ResultMessage)
_event_decoder = msgspec.json.Decoder(RuntimeEvent)


class UnsupportedVersion(msgspec.ValidationError):
    """A frame from a newer wire version this worker does not understand."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode(value: Any) -> bytes:
    """Encode any envelope or JSON-able value; a value that cannot be encoded raises EncodeError."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(f"cannot encode {type(value).__name__} as JSON: {exc}") from None


def encode_raw(value: Any) -> msgspec.Raw:
    """Pre-encode a payload so the envelope around it can never fail to encode."""
    return msgspec.Raw(encode(value))


def decode_task(body: bytes) -> TaskMessage[msgspec.Raw]:
    """Decode a task body, leaving ``input`` as raw JSON. Raises one of ``DecodeError``."""
    task = _task_decoder.decode(body)
    if task.v != WIRE_VERSION:
        raise UnsupportedVersion(f"unsupported wire version {task.v} (this worker speaks 1)")
    return task


def decode_result(body: bytes) -> ResultMessage:
    return _result_decoder.decode(body)


def decode_event(body: bytes) -> RuntimeEvent:
    return _event_decoder.decode(body)


class _Peek(msgspec.Struct, gc=False):
    task_id: Any = None
    agent: Any = None
    reply_to: Any = None
    request_id: Any = None


_peek_decoder = msgspec.json.Decoder(_Peek)


def peek(body: bytes) -> _Peek | None:
    """Best-effort read of the routing fields of a body that failed full validation.

    Lets the worker answer a malformed task on its ``reply_to`` when that much is
    readable; returns None when the body is not even a JSON object.
    """
    try:
        p = _peek_decoder.decode(body)
    except DecodeError:
        return None
    return _Peek(
        task_id=p.task_id if isinstance(p.task_id, str) and len(p.task_id) <= 128 else None,
        agent=p.agent if isinstance(p.agent, str) else None,
        reply_to=p.reply_to if isinstance(p.reply_to, str) else None,
        request_id=p.request_id if isinstance(p.request_id, str) else None,
    )
