"""A signed fleet: only tasks signed over their exact bytes, unexpired, for this agent run.

Tasks are published raw through the broker API (as an attacker with broker access
would) and the answers are read raw from the results topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog

from murmur import Client, Keyring, Worker, agent
from murmur.brokers import Broker, Outbound, connect_broker
from murmur.messages import ResultMessage, TaskMessage, topics
from murmur.messages.codec import decode_result, encode, now_ms
from murmur.signing import RESULT_DOMAIN

OLD = b"old-signing-key-000000000000000000"
NEW = b"new-signing-key-111111111111111111"


class Rig:
    """A signed worker, a raw broker connection and a private results topic."""

    def __init__(self, broker: Broker, worker: Worker, agent_name: str, runs: list[Any]) -> None:
        self.broker = broker
        self.worker = worker
        self.agent = agent_name
        self.runs = runs
        self.client_id = uuid.uuid4().hex[:12]
        self.reply_to = topics.results_topic(self.client_id)

    def task(self, input: Any, **fields: Any) -> TaskMessage[Any]:
        fields.setdefault("reply_to", self.reply_to)
        fields.setdefault("agent", self.agent)
        return TaskMessage(
            task_id=fields.pop("task_id", uuid.uuid4().hex),
            input=input,
            created_at=now_ms(),
            **fields,
        )

    async def send(self, body: bytes, headers: dict[str, str], topic: str | None = None) -> None:
        await self.broker.publish([Outbound(topic or topics.task_topic(self.agent), body, headers)])

    async def answers(
        self, n: int, timeout: float = 20.0
    ) -> list[tuple[ResultMessage, dict[str, str]]]:
        out: list[tuple[ResultMessage, dict[str, str]]] = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in await self.sub.get(0.5):
                out.append((decode_result(m.body), dict(m.headers)))
        return out


@contextlib.asynccontextmanager
async def signed_rig(url: str, name: str, keys: Any = (NEW, OLD), **kw: Any) -> AsyncIterator[Rig]:
    runs: list[Any] = []

    async def guarded(x: Any) -> Any:
        runs.append(x)
        return {"echo": x}

    worker = Worker(
        broker=url, agents=[agent(name=name)(guarded)], signing_key=keys, heartbeat_seconds=0, **kw
    )
    broker = await connect_broker(url)
    await worker.start()
    rig = Rig(broker, worker, name, runs)
    rig.sub = await broker.subscribe(rig.reply_to)  # type: ignore[attr-defined]
    try:
        yield rig
    finally:
        await rig.sub.close()  # type: ignore[attr-defined]
        await worker.stop()
        await broker.close()


def signed(body: bytes, key: bytes = NEW) -> dict[str, str]:
    return {"content-type": "application/json", **Keyring(key).headers(body)}


async def test_signed_task_runs_and_its_result_is_signed(broker_url: str, unique: str) -> None:
    async with signed_rig(broker_url, unique) as rig:
        body = encode(rig.task(7))
        await rig.send(body, signed(body))
        ((result, headers),) = await rig.answers(1)
    assert result.status == "ok" and result.output == {"echo": 7}
    assert rig.runs == [7]
    raw = encode(result)
    verdict = Keyring(NEW).verify(raw, headers["murmur-sig"], headers["murmur-kid"], RESULT_DOMAIN)
    assert verdict.ok, "results are signed with the worker's first key"


async def test_tamper_matrix(broker_url: str, unique: str) -> None:
    async with signed_rig(broker_url, unique) as rig:
        cases: dict[str, tuple[bytes, dict[str, str], str]] = {}
        good = encode(rig.task({"amount": 10}, task_id="tamper-input"))
        flipped = good.replace(b'"amount":10', b'"amount":99')
        cases["tamper-input"] = (flipped, signed(good), "mismatch")
        # Flip single bytes at sampled positions (keeping the JSON parseable enough
        # that the worker can still find reply_to to answer).
        for i, pos in enumerate(random.Random(7).sample(range(len(good)), 8)):
            task_id = f"flip{i}"
            base = encode(rig.task(1, task_id=task_id))
            pos = pos % len(base)
            b = bytearray(base)
            b[pos] ^= 0x01
            cases[task_id] = (bytes(b), signed(base), "mismatch")
        unsigned = encode(rig.task(1, task_id="unsigned"))
        cases["unsigned"] = (unsigned, {"content-type": "application/json"}, "missing")
        stranger = encode(rig.task(1, task_id="stranger"))
        cases["stranger"] = (stranger, signed(stranger, b"attacker-key-" * 3), "unknown_kid")
        no_kid = encode(rig.task(1, task_id="no-kid"))
        forged = {"murmur-sig": Keyring(b"attacker-key-" * 3).sign(no_kid)[0]}
        cases["no-kid"] = (no_kid, forged, "mismatch")
        bad_sig = encode(rig.task(1, task_id="bad-sig"))
        cases["bad-sig"] = (bad_sig, {"murmur-sig": "not-hex", "murmur-kid": "x"}, "malformed")
        expired = encode(rig.task(1, task_id="expired", expires_at=now_ms() - 60_000))
        cases["expired"] = (expired, signed(expired), "expired")
        # A result replayed as a task: signed under the result domain.
        replay = encode(rig.task(1, task_id="result-replay"))
        sig, kid = Keyring(NEW).sign(replay, RESULT_DOMAIN)
        cases["result-replay"] = (replay, {"murmur-sig": sig, "murmur-kid": kid}, "mismatch")
        for body, headers, _ in cases.values():
            await rig.send(body, headers)
        # Valid signature, but published on another agent's topic (agent swap).
        other = unique + "x"
        swapped = encode(rig.task(1, task_id="swapped", agent=other))
        await rig.send(swapped, signed(swapped))
        cases["swapped"] = (swapped, {}, "unknown_agent")
        # Every case is answered, or (a flip that broke reply_to or the JSON itself) dead-lettered.
        by_body = {body: task_id for task_id, (body, _, _) in cases.items()}
        answers: list[tuple[ResultMessage, dict[str, str]]] = []
        dead: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answers += await rig.answers(len(cases) - len(answers), timeout=0.5)
            for m in await rig.broker.read(topics.dead_topic(unique)):
                if by_body[m.body] != "swapped":  # unknown agent: answered *and* dead-lettered
                    dead[by_body[m.body]] = m.headers["murmur-dead-reason"]
            if len(answers) + len(dead) >= len(cases):
                break
        assert rig.runs == [], "a rejected task ran"
    # A flip inside task_id is answered under the mutated id; one that broke reply_to or the
    # JSON is dead-lettered. Either way it is rejected as a mismatch, exactly once.
    assert len(answers) + len(dead) == len(cases), "each case answered or dead-lettered once"
    assert all(r.status == "rejected" and r.error.type for r, _ in answers)
    reasons = {r.task_id: r.error.reason for r, _ in answers}
    for task_id, (_, _, reason) in cases.items():
        if task_id.startswith("flip"):
            continue
        assert reasons.get(task_id) == reason, f"{task_id}: {reasons.get(task_id)} != {reason}"
    plain = {task_id for task_id in cases if not task_id.startswith("flip")}
    flips = [r.error.reason for r, _ in answers if r.task_id not in plain]
    flips += [why for task_id, why in dead.items() if task_id not in plain]
    assert flips == ["mismatch"] * 8


async def test_unanswerable_rejections_are_dead_lettered(broker_url: str, unique: str) -> None:
    async with signed_rig(broker_url, unique) as rig:
        body = encode(rig.task(1, reply_to=None, task_id="fire-and-forget"))
        await rig.send(body, {"murmur-sig": "0" * 64})
        deadline = time.monotonic() + 20
        dead: list[Any] = []
        while not dead and time.monotonic() < deadline:
            dead = await rig.broker.read(topics.dead_topic(unique))
            await asyncio.sleep(0.2)
        assert rig.runs == []
    assert len(dead) == 1
    assert dead[0].body == body
    assert dead[0].headers["murmur-dead-reason"] == "mismatch"


async def test_rotation_loses_nothing(broker_url: str, unique: str) -> None:
    """Workers hold (new, old); publishers switch from old to new mid-run: nothing rejected."""
    async with signed_rig(broker_url, unique) as rig, Client(broker_url, signing_key=OLD) as before:
        handles = [await before.submit(unique, i) for i in range(50)]
        async with Client(broker_url, signing_key=NEW) as after:
            handles += [await after.submit(unique, i) for i in range(50, 100)]
            results = [await h.result(timeout=30) for h in handles]
    # Each result is signed with the key that signed its task, so the publisher still
    # on the old key accepts its answers too.
    assert [r.status for r in results] == ["ok"] * 100
    assert sorted(rig.runs) == list(range(100))


async def test_client_drops_forged_results_and_keeps_the_real_one(
    broker_url: str, unique: str
) -> None:
    async with (
        signed_rig(broker_url, unique, keys=NEW),
        Client(broker_url, signing_key=NEW) as client,
    ):
        task_id = "forge-" + unique
        forged = ResultMessage(task_id=task_id, status="ok", output={"echo": "forged"})
        body = encode(forged)
        attacker = {"murmur-sig": Keyring(b"attacker-key-" * 3).sign(body, RESULT_DOMAIN)[0]}
        handle = await client.submit(unique, "real", task_id=task_id)
        await client.broker.publish([Outbound(client.results_topic, body, attacker)])
        result = await handle.result(timeout=30)
    assert result.output == {"echo": "real"}
    assert client.stats.forged_results >= 1


async def test_logs_hold_neither_keys_nor_bodies(broker_url: str, unique: str) -> None:
    secret_input = "TOP-SECRET-PAYLOAD-" + unique
    with structlog.testing.capture_logs() as logs:
        async with signed_rig(broker_url, unique) as rig:
            body = encode(rig.task(secret_input, task_id="t-ok"))
            await rig.send(body, signed(body))
            bad = encode(rig.task(secret_input, task_id="t-bad"))
            await rig.send(bad, signed(bad, b"attacker-key-" * 3))
            await rig.send(b"\x00\x01 garbage " + secret_input.encode(), {})
            await rig.answers(2)
            await asyncio.sleep(0.5)
    text = json.dumps(logs, default=str)
    assert logs, "expected log lines"
    for needle in (secret_input, NEW.decode(), OLD.decode(), NEW.hex(), OLD.hex()):
        assert needle not in text


@pytest.mark.parametrize("keys", [b"", ()])
def test_empty_keys_are_refused(keys: Any) -> None:
    from murmur.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="empty"):
        Worker(broker="memory://x", agents=[agent(name="echo")(lambda x: x)], signing_key=keys)
