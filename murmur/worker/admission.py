"""Admission: decide, before anything runs, whether a delivery is a task this worker may run.

Every check is cheap and ordered so untrusted bytes are inspected as little as possible:
size and header count first (no decoding), then the signature over the exact bytes, then
the schema, routing and validity window. A delivery that fails gets a :class:`Rejection`
saying how to answer it; nothing here raises on bad input.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass

import msgspec

from murmur.brokers.base import Delivery
from murmur.messages import headers as h
from murmur.messages.codec import DecodeError, UnsupportedVersion, decode_task, now_ms, peek
from murmur.messages.envelopes import TaskMessage
from murmur.signing.keyring import Keyring, Reason, is_expired

# Results and events may only go to publishers' own topics: a task must not be able to
# make a worker write into another agent's task queue or anywhere else.
_REPLY = re.compile(r"murmur\.results\.[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_EVENTS = re.compile(r"murmur\.events\.[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """How to answer a delivery that must not run.

    ``status`` goes into the result ("rejected" for bad or unauthenticated input, "error"
    for a task that exhausted its deliveries). ``dead_letter`` keeps a copy in the dead
    topic; a rejection that cannot be answered (no readable ``reply_to``) is always
    dead-lettered, so nothing is dropped silently.
    """

    reason: str
    type: str
    message: str
    status: str = "rejected"
    dead_letter: bool = True
    task_id: str | None = None
    reply_to: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_headers: int = 64
    max_deliveries: int = 5
    clock_skew_ms: int = 5_000


def valid_reply_to(topic: str | None) -> bool:
    return topic is None or _REPLY.fullmatch(topic) is not None


def admit(
    delivery: Delivery,
    agent: str,
    hosted: Container[str],
    keyring: Keyring | None,
    limits: Limits,
) -> TaskMessage[msgspec.Raw] | Rejection:
    """Return the decoded task, or the reason it must not run."""
    body = delivery.body
    if len(body) > limits.max_body_bytes:
        return Rejection(
            "oversize",
            "PayloadTooLarge",
            f"task body is {len(body)} bytes; the limit is {limits.max_body_bytes}",
        )
    if len(delivery.headers) > limits.max_headers:
        return _answerable(
            body,
            "too_many_headers",
            "MalformedTask",
            f"task has {len(delivery.headers)} headers; the limit is {limits.max_headers}",
        )
    if keyring is not None:
        verdict = keyring.verify(
            body, delivery.headers.get(h.SIGNATURE), delivery.headers.get(h.KEY_ID)
        )
        if not verdict.ok:
            assert verdict.reason is not None
            return _answerable(
                body,
                reason=verdict.reason.value,
                type="SignatureError",
                message=_SIGNATURE_MESSAGES[verdict.reason],
                # A reply-able forgery is answered, not stored: a flood of forged tasks
                # must not fill the dead-letter topic.
                dead_letter=False,
            )
    try:
        task = decode_task(body)
    except UnsupportedVersion as exc:
        return _answerable(body, "unsupported_version", "MalformedTask", str(exc))
    except DecodeError as exc:
        return _answerable(body, "malformed", "MalformedTask", f"task body is invalid: {exc}")
    task_id, request_id = task.task_id, task.request_id or None
    if not valid_reply_to(task.reply_to):
        return Rejection(
            "bad_reply_to",
            "MalformedTask",
            "reply_to must be a results topic 'murmur.results.<client_id>'",
            task_id=task_id,
            request_id=request_id,
        )
    reply_to = task.reply_to
    if task.events_topic is not None and _EVENTS.fullmatch(task.events_topic) is None:
        return Rejection(
            "bad_events_topic",
            "MalformedTask",
            "events_topic must be 'murmur.events.<client_id>'",
            task_id=task_id,
            reply_to=reply_to,
            request_id=request_id,
        )
    if task.agent != agent:
        if task.agent in hosted:
            reason = "agent_mismatch"
            message = f"a task for {task.agent!r} arrived on murmur.{agent}.tasks"
        else:
            reason = "unknown_agent"
            message = f"no agent {task.agent!r} here (topic murmur.{agent}.tasks)"
        return Rejection(
            reason,
            "UnknownAgent",
            message,
            task_id=task_id,
            reply_to=reply_to,
            request_id=request_id,
        )
    if is_expired(task.expires_at, now_ms(), limits.clock_skew_ms):
        return Rejection(
            Reason.EXPIRED.value,
            "Expired",
            "task expired before it could run",
            dead_letter=reply_to is None,
            task_id=task_id,
            reply_to=reply_to,
            request_id=request_id,
        )
    if delivery.delivery_count > limits.max_deliveries:
        return Rejection(
            "max_deliveries",
            "MaxDeliveriesExceeded",
            f"delivered {delivery.delivery_count} times (max_deliveries="
            f"{limits.max_deliveries}); moved to the dead-letter topic",
            status="error",
            task_id=task_id,
            reply_to=reply_to,
            request_id=request_id,
        )
    return task


_SIGNATURE_MESSAGES = {
    Reason.MISSING: "task is not signed (no murmur-sig header) and this worker requires signatures",
    Reason.MALFORMED: "murmur-sig is not a lower-case hex HMAC-SHA256",
    Reason.UNKNOWN_KID: "task was signed with a key id this worker does not hold",
    Reason.MISMATCH: "signature does not match the body",
    Reason.EXPIRED: "signature expired",
}


def _answerable(
    body: bytes, reason: str, type: str, message: str, *, dead_letter: bool = True
) -> Rejection:
    p = peek(body)
    reply_to = p.reply_to if p is not None and valid_reply_to(p.reply_to) else None
    return Rejection(
        reason,
        type,
        message,
        dead_letter=dead_letter or reply_to is None,
        task_id=p.task_id if p is not None else None,
        reply_to=reply_to,
        request_id=p.request_id if p is not None else None,
    )
