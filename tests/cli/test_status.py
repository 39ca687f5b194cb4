"""``murmur status``: live workers from heartbeats, queues per agent."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.cli._support import cli_env, murmur, start_worker, wait_until

pytestmark = pytest.mark.brokers("redis", "nats")


def status(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = murmur("status", "--json", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def mine(doc: dict[str, Any], prefix: str) -> list[str]:
    return sorted(w["worker_id"] for w in doc["workers"] if w["worker_id"].startswith(prefix))


def test_live_workers_come_and_go(broker_url: str, unique: str, tmp_path: Path) -> None:
    env = cli_env(broker_url, unique)
    a, b = f"{unique}-a", f"{unique}-b"
    wa = start_worker(env, tmp_path / "a.log", "--consumer-id", a, "--heartbeat", "1")
    wb = start_worker(
        env, tmp_path / "b.log", "--consumer-id", b, "--heartbeat", "1",
        "--agents", f"{unique}-echo",
    )  # fmt: skip
    try:
        doc = wait_until(lambda: (d := status(env)) and mine(d, unique) == [a, b] and d, 10, "2")
        assert set(doc) == {"generated_at", "broker", "workers", "agents"}
        wdoc = next(w for w in doc["workers"] if w["worker_id"] == b)
        assert wdoc["agents"] == [f"{unique}-echo"]
        assert wdoc["pid"] == wb.pid
        assert wdoc["interval_s"] == 1.0
        assert wdoc["last_beat_age_s"] < 3.5
        for key in ("host", "in_flight", "processed", "failed", "uptime_s", "version"):
            assert key in wdoc
        agents = {x["agent"]: x for x in doc["agents"]}
        assert agents[f"{unique}-echo"]["workers"] == 2
        assert agents[f"{unique}-sleepy"]["workers"] == 1
        assert agents[f"{unique}-echo"]["depth"] == 0
        assert agents[f"{unique}-echo"]["error"] is None

        # A drained worker says so (worker.stopped): gone at once.
        assert wa.stop(signal.SIGTERM) == 0
        assert mine(status(env), unique) == [b]
        # A killed one says nothing: gone after ~3 missed beats (3 x 1 s + slack).
        wb.stop(signal.SIGKILL)
        wait_until(lambda: mine(status(env), unique) == [], 10, "the killed worker to expire")
    finally:
        wa.close()
        wb.close()


def test_agents_flag_and_tables(broker_url: str, unique: str) -> None:
    env = cli_env(broker_url, unique)
    assert murmur("submit", f"{unique}-idle", '"x"', env=env).returncode == 0
    doc = status(env, "--agents", f"{unique}-idle")
    idle = next(a for a in doc["agents"] if a["agent"] == f"{unique}-idle")
    assert idle == {
        "agent": f"{unique}-idle", "workers": 0, "depth": 1, "pending": 0, "dead": 0,
        "consumers": idle["consumers"], "error": None,
    }  # fmt: skip
    table = murmur("status", "--agents", f"{unique}-idle", env=env)
    assert table.returncode == 0
    assert f"{unique}-idle" in table.stdout
