"""``murmur worker --processes N``: restarts a killed child under its old name, loses nothing,
and drains every child on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from murmur import Client
from tests.cli._support import Proc, cli_env, murmur, wait_until

psutil = pytest.importorskip("psutil")


def children(proc: Proc) -> dict[str, int]:
    """consumer id -> pid of the supervisor's live worker processes."""
    out = {}
    for child in psutil.Process(proc.pid).children():
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "--consumer-id" in cmd and child.status() != psutil.STATUS_ZOMBIE:
            out[cmd[cmd.index("--consumer-id") + 1]] = child.pid
    return out


def live_workers(env: dict[str, str], prefix: str) -> dict[str, int]:
    doc = json.loads(murmur("status", "--json", env=env).stdout)
    return {w["worker_id"]: w["pid"] for w in doc["workers"] if w["worker_id"].startswith(prefix)}


async def run_all(url: str, agent: str, n: int, kill: Callable[[], None]) -> list[int]:
    async with Client(url) as client:
        handles = await client.submit_many(agent, [{"s": 0.6, "n": i} for i in range(n)])
        await asyncio.sleep(0.8)  # both children hold tasks now
        await asyncio.to_thread(kill)
        results = [await h.result(timeout=40) for h in handles]
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    return sorted(r.output["n"] for r in results)


@pytest.mark.brokers("redis", "nats")
def test_killed_child_is_restarted_and_no_task_is_lost(
    broker_url: str, unique: str, tmp_path: Path
) -> None:
    env = cli_env(broker_url, unique)
    base = f"{unique}-host"
    args = ["worker", "cliapp", "--agents", f"{unique}-sleepy", "--processes", "2",
            "--consumer-id", base, "--heartbeat", "1", "--reclaim-ms", "3000",
            "--concurrency", "4"]  # fmt: skip
    with Proc(args, env, tmp_path / "supervisor.log") as sup:
        sup.wait_for('"worker_started"', timeout=20, count=2)
        before = wait_until(lambda: len(children(sup)) == 2 and children(sup), 10, "2 children")
        assert set(before) == {f"{base}-0", f"{base}-1"}
        victim = before[f"{base}-1"]

        done = asyncio.run(
            run_all(broker_url, f"{unique}-sleepy", 24, lambda: psutil.Process(victim).kill())
        )
        assert done == list(range(24))

        # The same slot came back under the same consumer id, in a new process.
        after = wait_until(lambda: len(children(sup)) == 2 and children(sup), 10, "restart")
        assert after[f"{base}-1"] != victim
        assert after[f"{base}-0"] == before[f"{base}-0"]
        assert any(e.get("exit") == "signal SIGKILL" for e in sup.events("worker_process_exited"))
        live = wait_until(
            lambda: (w := live_workers(env, base)).get(f"{base}-1") == after[f"{base}-1"] and w,
            10,
            "the restarted child in status",
        )
        assert set(live) == {f"{base}-0", f"{base}-1"}

        t0 = time.monotonic()
        assert sup.stop(signal.SIGTERM, timeout=20) == 0, sup.tail()
        assert time.monotonic() - t0 < 15
    stopped = sup.events("worker_process_stopped")
    assert sorted(e["exit"] for e in stopped) == [0, 0]
    assert sup.events("supervisor_stopped")[0]["drained"] is True


def test_sigterm_drains_in_flight_work(redis_url: str, unique: str, tmp_path: Path) -> None:
    env = cli_env(redis_url, unique)
    args = ["worker", "cliapp", "--agents", f"{unique}-sleepy", "--processes", "2",
            "--consumer-id", f"{unique}-d", "--heartbeat", "1"]  # fmt: skip

    async def submit_and_stop(sup: Proc) -> list[bool]:
        async with Client(redis_url) as client:
            handles = await client.submit_many(f"{unique}-sleepy", [{"s": 1.5}] * 4)
            await asyncio.sleep(0.5)  # running on the children now
            sup.proc.send_signal(signal.SIGTERM)
            return [(await h.result(timeout=20)).ok for h in handles]

    with Proc(args, env, tmp_path / "supervisor.log") as sup:
        sup.wait_for('"worker_started"', timeout=20, count=2)
        assert asyncio.run(submit_and_stop(sup)) == [True] * 4
        assert sup.proc.wait(20) == 0, sup.tail()
