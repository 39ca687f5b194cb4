"""Wire format v1 envelopes: exact field names, round trips, leniency and strictness."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from murmur.messages import ErrorInfo, ResultMessage, RuntimeEvent, TaskMessage, topics
from murmur.messages.codec import (
    DecodeError,
    UnsupportedVersion,
    decode_event,
    decode_result,
    decode_task,
    encode,
    peek,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.text(min_size=1, max_size=128)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
opt_ms = st.none() | st.integers(0, 2**42)


@given(
    task_id=ids,
    agent=names,
    input=json_values,
    reply=st.none() | names,
    req=st.text(max_size=40),
    created=st.integers(0, 2**42),
    expires=opt_ms,
)
def test_task_round_trip(
    task_id: str,
    agent: str,
    input: Any,
    reply: str | None,
    req: str,
    created: int,
    expires: int | None,
) -> None:
    task = TaskMessage(
        task_id=task_id,
        agent=agent,
        input=input,
        reply_to=None if reply is None else topics.results_topic(reply),
        request_id=req,
        created_at=created,
        expires_at=expires,
    )
    raw = decode_task(encode(task))
    assert msgspec.json.decode(raw.input) == input
    assert (
        raw.task_id,
        raw.agent,
        raw.reply_to,
        raw.request_id,
        raw.created_at,
        raw.expires_at,
    ) == (
        task.task_id,
        task.agent,
        task.reply_to,
        task.request_id,
        task.created_at,
        task.expires_at,
    )
    typed = msgspec.json.decode(encode(task), type=TaskMessage[Any])
    assert typed == task


@given(
    status=st.sampled_from(["ok", "error", "rejected"]),
    output=json_values,
    err=st.none()
    | st.builds(ErrorInfo, type=names, message=st.text(max_size=50), retryable=st.booleans()),
    attempt=st.integers(1, 10),
    duration=st.floats(0, 1e6, allow_nan=False),
)
def test_result_round_trip(
    status: str, output: Any, err: ErrorInfo | None, attempt: int, duration: float
) -> None:
    result = ResultMessage(
        task_id="t",
        request_id="r",
        agent="a",
        status=status,
        output=output,
        error=err,  # type: ignore[arg-type]
        attempt=attempt,
        worker_id="w",
        started_at=1,
        finished_at=2,
        duration_ms=duration,
    )
    assert decode_result(encode(result)) == result


@given(type=names, payload=json_values, seq=st.integers(0, 1000))
def test_event_round_trip(type: str, payload: Any, seq: int) -> None:
    event = RuntimeEvent(
        type=type, task_id="t", agent="a", worker_id="w", ts=5, seq=seq, payload=payload
    )
    assert decode_event(encode(event)) == event


def test_field_names_are_the_contract() -> None:
    body = json.loads(encode(TaskMessage(task_id="t", agent="a", input={"x": 1})))
    assert set(body) == {
        "v",
        "task_id",
        "agent",
        "input",
        "reply_to",
        "events_topic",
        "request_id",
        "created_at",
        "expires_at",
    }
    result = json.loads(encode(ResultMessage(task_id="t", status="ok")))
    assert set(result) >= {
        "v",
        "task_id",
        "request_id",
        "agent",
        "status",
        "output",
        "error",
        "attempt",
        "worker_id",
        "started_at",
        "finished_at",
        "duration_ms",
    }
    err = json.loads(encode(ErrorInfo(type="X", message="m", retryable=True)))
    assert err == {"type": "X", "message": "m", "retryable": True}


def test_unknown_fields_are_ignored_and_optional_ones_default() -> None:
    task = decode_task(b'{"v":1,"task_id":"t","agent":"a","input":[1],"future_field":{"x":1}}')
    assert task.reply_to is None and task.expires_at is None and bytes(task.input) == b"[1]"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"v":1,"task_id":"","agent":"a","input":1}', "$.task_id"),
        (b'{"v":1,"task_id":"' + b"x" * 129 + b'","agent":"a","input":1}', "$.task_id"),
        (b'{"v":1,"agent":"a","input":1}', "task_id"),
        (b'{"v":1,"task_id":"t","agent":"a"}', "input"),
        (b'{"v":1,"task_id":"t","agent":"a","input":1,"expires_at":"soon"}', "$.expires_at"),
        (b"[1,2]", "object"),
        (b'{"v":1,"task_id":"t",', "truncated"),
        (b"\xff\xfe", "invalid"),
    ],
)
def test_invalid_tasks_name_the_problem(body: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_task(body)
    assert fragment.lower() in str(info.value).lower()


def test_newer_wire_version_is_refused() -> None:
    with pytest.raises(UnsupportedVersion, match="version 2"):
        decode_task(b'{"v":2,"task_id":"t","agent":"a","input":1}')


def test_peek_reads_routing_fields_of_invalid_tasks() -> None:
    p = peek(b'{"task_id":"t1","reply_to":"murmur.results.c","input":"missing agent"}')
    assert p is not None and (p.task_id, p.reply_to) == ("t1", "murmur.results.c")
    p = peek(b'{"task_id":5,"reply_to":["x"]}')
    assert p is not None and p.task_id is None and p.reply_to is None
    assert peek(b"not json") is None


def test_topic_names() -> None:
    assert topics.task_topic("summarize") == "murmur.summarize.tasks"
    assert topics.dead_topic("summarize") == "murmur.summarize.dead"
    assert topics.results_topic("c1") == "murmur.results.c1"
    assert topics.events_topic("c1") == "murmur.events.c1"
    assert topics.HEARTBEATS == "murmur.heartbeats"
    assert topics.group_name("summarize") == topics.task_topic("summarize")
    assert topics.agent_of_topic("murmur.x.dead") == "x"


@pytest.mark.parametrize("bad", ["", "a.b", "a b", "-x", "x" * 101, "a*", "results", "é"])
def test_agent_names_must_be_valid_everywhere(bad: str) -> None:
    from murmur.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        topics.validate_agent_name(bad)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:secret@h:6380", "rediss://user:***@h:6380"),
        ("nats://u:secret@h1:4222,h2:4222", "nats://u:***@h1:4222,h2:4222"),
        ("nats://token@h:4222", "nats://***@h:4222"),
        ("kafka://h1:9092,h2:9092", "kafka://h1:9092,h2:9092"),
        ("memory://x", "memory://x"),
    ],
)
def test_urls_are_redacted_for_logs(url: str, shown: str) -> None:
    from murmur.brokers.urls import redact

    assert redact(url) == shown
    assert "secret" not in redact(url)


def test_invalid_utf8_inside_a_string_is_a_decode_error() -> None:
    """Found by the fuzz test: msgspec raises UnicodeDecodeError here, which killed the
    worker's fetch loop before it was treated as a malformed task."""
    body = b'{"v":1,"task_id":"t","agent":"a","input":1,"reply_to":"murm\xa7r.results.x"}'
    with pytest.raises(DecodeError):
        decode_task(body)
    assert peek(body) is None
