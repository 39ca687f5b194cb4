"""``murmur dlq``: a dead letter is listed, replayed under the same task id, and completes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from murmur.brokers import connect_broker
from murmur.messages import TaskMessage, encode, task_topic
from tests.cli._support import cli_env, murmur, one_line_error, start_worker, wait_until

pytestmark = pytest.mark.brokers("redis", "nats")


async def publish_fire_and_forget(url: str, agent: str, task_id: str, value: Any) -> None:
    """A task with no reply_to: when it fails, the worker keeps it as a dead letter."""
    broker = await connect_broker(url)
    try:
        await broker.ensure_task_topic(agent)
        body = encode(TaskMessage(task_id=task_id, agent=agent, input=value, reply_to=None))
        await broker.publish_one(task_topic(agent), body, {"content-type": "application/json"})
    finally:
        await broker.close()


def dead(env: dict[str, str], agent: str) -> list[dict[str, Any]]:
    proc = murmur("dlq", "list", agent, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_list_replay_purge(broker_url: str, unique: str, tmp_path: Path) -> None:
    env = cli_env(broker_url, unique)
    agent = f"{unique}-flagged"
    flag, done = tmp_path / "flag", tmp_path / "done"
    worker = start_worker(env, tmp_path / "w.log", "--agents", agent, "--consumer-id", unique)
    try:
        for i in (1, 2):
            value = {"flag": str(flag), "done": str(done), "id": f"job{i}"}
            asyncio.run(publish_fire_and_forget(broker_url, agent, f"{unique}-job{i}", value))
        rows = wait_until(lambda: len(r := dead(env, agent)) == 2 and r, 10, "2 dead letters")
        first = rows[0]
        assert first["task_id"] == f"{unique}-job1"
        assert first["reason"] == "failed"
        assert first["error"] == "NoFlag: flag file missing"
        assert first["delivery_count"] == 1
        assert first["worker"] == unique
        assert first["dead_at"] > 0
        table = murmur("dlq", "list", agent, env=env)
        assert f"{unique}-job2" in table.stdout

        flag.touch()  # the agent succeeds from now on
        replay = murmur("dlq", "replay", agent, "--id", first["id"], env=env)
        assert replay.returncode == 0, replay.stderr
        assert "replayed 1" in replay.stderr
        wait_until(lambda: done.exists() and done.read_text() == "job1\n", 10, "job1 to run")
        assert [r["task_id"] for r in dead(env, agent)] == [f"{unique}-job2"]

        missing = murmur("dlq", "replay", agent, "--id", first["id"], env=env)
        assert missing.returncode == 1
        assert "not found" in one_line_error(missing)

        everything = murmur("dlq", "replay", agent, "--all", env=env)
        assert everything.returncode == 0, everything.stderr
        wait_until(lambda: done.read_text() == "job1\njob2\n", 10, "job2 to run")
        assert dead(env, agent) == []
    finally:
        worker.stop()


def test_purge_needs_yes(broker_url: str, unique: str, tmp_path: Path) -> None:
    env = cli_env(broker_url, unique)
    agent = f"{unique}-flagged"
    worker = start_worker(env, tmp_path / "w.log", "--agents", agent)
    try:
        value = {"flag": str(tmp_path / "never"), "done": str(tmp_path / "d"), "id": "x"}
        asyncio.run(publish_fire_and_forget(broker_url, agent, f"{unique}-x", value))
        wait_until(lambda: len(dead(env, agent)) == 1, 10, "a dead letter")
    finally:
        worker.stop()
    refused = murmur("dlq", "purge", agent, env=env)
    assert refused.returncode == 2
    assert len(dead(env, agent)) == 1
    purged = murmur("dlq", "purge", agent, "--yes", env=env)
    assert purged.returncode == 0, purged.stderr
    assert "purged 1" in purged.stderr
    assert dead(env, agent) == []
