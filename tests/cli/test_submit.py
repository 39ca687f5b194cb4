"""``murmur worker`` + ``murmur submit`` against real brokers, with the documented exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli._support import Proc, cli_env, murmur, one_line_error, start_worker

pytestmark = pytest.mark.brokers("redis", "nats")


@pytest.fixture
def worker(broker_url: str, unique: str, tmp_path: Path) -> Iterator[tuple[dict[str, str], Proc]]:
    env = cli_env(broker_url, unique)
    proc = start_worker(env, tmp_path / "worker.log", "--consumer-id", f"{unique}-w")
    yield env, proc
    assert proc.stop() == 0, proc.tail()


def test_round_trip_and_exit_codes(worker: tuple[dict[str, str], Proc], unique: str) -> None:
    env, _ = worker
    ok = murmur("submit", f"{unique}-echo", '{"text": "hi", "n": [1, 2]}', "--wait", env=env)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["status"] == "ok"
    assert result["output"] == {"text": "hi", "n": [1, 2]}
    assert result["worker_id"] == f"{unique}-w"
    assert result["task_id"] in ok.stderr  # the id is still reported, on stderr

    failed = murmur("submit", f"{unique}-fail", "{}", "--wait", env=env)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["error"]["type"] == "Planned"
    assert "Planned: failed on purpose" in failed.stderr

    slow = murmur("submit", f"{unique}-sleepy", '{"s": 5}', "--timeout", "0.5", env=env)
    assert slow.returncode == 3
    assert "timeout" in slow.stderr and slow.stdout == ""

    bad = murmur("submit", f"{unique}-echo", "{nope", "--wait", env=env)
    assert bad.returncode == 2
    assert "not valid JSON" in one_line_error(bad)


def test_stdin_task_id_and_no_wait(worker: tuple[dict[str, str], Proc], unique: str) -> None:
    env, _ = worker
    piped = murmur(
        "submit", f"{unique}-echo", "-", "-w", "--task-id", f"{unique}-t1", env=env, input="[1, 2]"
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["output"] == [1, 2]
    # The same task id again is answered from the worker's ledger, not run twice.
    again = murmur("submit", f"{unique}-echo", "[3]", "-w", "--task-id", f"{unique}-t1", env=env)
    assert json.loads(again.stdout)["output"] == [1, 2]

    fire = murmur("submit", f"{unique}-echo", "null", env=env)
    assert fire.returncode == 0, fire.stderr
    assert len(fire.stdout.strip()) == 32  # just the task id, for scripts
    assert "Future exception" not in fire.stderr


def test_events_stream_to_stderr(worker: tuple[dict[str, str], Proc], unique: str) -> None:
    env, _ = worker
    proc = murmur("submit", f"{unique}-sleepy", '{"s": 0.4}', "--events", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output"]["slept"] == 0.4
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds.count("task.progress") == 2
    assert kinds[-1] == "task.completed"


KEY = "k1:" + "ab" * 32


def test_signed_tasks(redis_url: str, unique: str, tmp_path: Path) -> None:
    signed = cli_env(redis_url, unique, MURMUR_SIGNING_KEYS=KEY)
    proc = start_worker(signed, tmp_path / "w.log", "--agents", f"{unique}-echo")
    try:
        ok = murmur("submit", f"{unique}-echo", "1", "-w", "--timeout", "10", env=signed)
        assert ok.returncode == 0, ok.stderr
        unsigned = cli_env(redis_url, unique)
        rejected = murmur("submit", f"{unique}-echo", "1", "-w", "--timeout", "10", env=unsigned)
        assert rejected.returncode == 1
        assert json.loads(rejected.stdout)["status"] == "rejected"
        assert "task rejected" in rejected.stderr
    finally:
        assert proc.stop() == 0


def test_configured_worker_as_app(redis_url: str, unique: str, tmp_path: Path) -> None:
    env = cli_env(redis_url, unique)
    clash = murmur("worker", "cliapp:worker", "--concurrency", "3", env=env)
    assert clash.returncode == 2
    assert "is a configured Worker, so --concurrency would be ignored" in one_line_error(clash)

    proc = Proc(["worker", "cliapp:worker"], env, tmp_path / "w.log")
    try:
        proc.wait_for('"worker_started"')
        ok = murmur("submit", f"{unique}-echo", '"hi"', "-w", "--timeout", "10", env=env)
        assert json.loads(ok.stdout)["worker_id"] == f"{unique}-configured"
    finally:
        assert proc.stop() == 0
