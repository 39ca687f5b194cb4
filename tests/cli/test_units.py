"""In-process checks of the pieces behind the commands (no subprocesses, memory://)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from murmur import Worker
from murmur.app_loading import AppLoadError, load_app, select_agents
from murmur.brokers import connect_broker
from murmur.cli._common import read_pages
from murmur.cli._fleet import RecentAgents, live_workers, worker_doc
from murmur.cli.dlq import replay_headers
from murmur.messages import HEARTBEATS, Presence, RuntimeEvent, WorkerInfo, encode
from murmur.messages.codec import now_ms
from murmur.metrics import HealthCheck, MetricsServer

APP = """
from murmur import agent, Worker

@agent
async def alpha(x: int) -> int:
    return x

@agent(name="beta")
async def _b(x: int) -> int:
    return x

async def plain(x: int) -> int:
    return x

both = [alpha, _b]
named = {"gamma": alpha}
number = 42
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[str]:
    """A module named ``unique`` in the current directory, as ./app.py is for a user."""
    (tmp_path / f"{unique}.py").write_text(textwrap.dedent(APP))
    (tmp_path / f"{unique}_empty.py").write_text("x = 1\n")
    (tmp_path / f"{unique}_worker.py").write_text(
        f"from murmur import Worker\nfrom {unique} import alpha\n"
        "worker = Worker(broker='memory://x', agents=[alpha])\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield unique
    for name in (unique, f"{unique}_empty", f"{unique}_worker"):
        sys.modules.pop(name, None)


def test_load_app_forms(app_dir: str) -> None:
    assert list(load_app(app_dir).agents) == ["alpha", "beta"]  # discovered
    assert list(load_app(f"{app_dir}:alpha").agents) == ["alpha"]
    assert list(load_app(f"{app_dir}:both").agents) == ["alpha", "beta"]
    assert list(load_app(f"{app_dir}:named").agents) == ["gamma"]  # dict key names the topic
    assert list(load_app(f"{app_dir}:plain").agents) == ["plain"]  # seed API: plain handler
    loaded = load_app(f"{app_dir}_worker:worker")
    assert isinstance(loaded.worker, Worker)
    assert list(select_agents(load_app(app_dir), ["beta"])) == ["beta"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("{m}:number", "names a int, not an agent"),
        ("{m}:missing", "agents found there: alpha, beta"),
        ("{m}_empty", "no agents found"),
        ("{m}.py", "use the module name instead"),
        ("{m}:", "not 'module' or 'module:attribute'"),
        ("nope_{m}", "cannot import"),
    ],
)
def test_load_app_errors(app_dir: str, spec: str, needle: str) -> None:
    with pytest.raises(AppLoadError) as info:
        load_app(spec.format(m=app_dir))
    assert needle in str(info.value)


def test_unknown_agent_lists_known_ones(app_dir: str) -> None:
    with pytest.raises(AppLoadError, match=r"unknown agent 'zeta'.*has: alpha, beta"):
        select_agents(load_app(app_dir), ["alpha", "zeta"])


async def test_read_pages_goes_past_one_read(unique: str) -> None:
    broker = await connect_broker(f"memory://{unique}")
    await broker.publish_one("t", b"0")
    for i in range(1, 26):
        await broker.publish_one("t", str(i).encode())
    seen = [m.body async for page in read_pages(broker, "t", page=7) for m in page]
    assert seen == [str(i).encode() for i in range(26)]  # no duplicates, nothing missed
    assert [m async for m in read_pages(broker, "t", until_ms=0)] == []


def beat(worker_id: str, type: str, ts: int, interval: float = 1.0) -> bytes:
    info = WorkerInfo(worker_id=worker_id, host="h", pid=1, agents=["a"], version="0",
                      interval_s=interval)  # fmt: skip
    return encode(
        RuntimeEvent(type=type, worker_id=worker_id, ts=ts, payload=msgspec.to_builtins(info))
    )


async def test_live_workers_come_from_presence_records(unique: str) -> None:
    broker = await connect_broker(f"memory://{unique}")
    now = now_ms()

    def record(worker_id: str, beat_at: int, processed: int = 0) -> bytes:
        return encode(
            Presence(worker_id=worker_id, host="h", pid=1, agents=["a"], version="0",
                     processed=processed, uptime_s=5.0, beat_at=beat_at,
                     expires_at=beat_at + 5000)
        )  # fmt: skip

    await broker.put_presence("b", record("b", now - 1000), 5000)
    await broker.put_presence("a", record("a", now - 500, processed=7), 5000)
    await broker.put_presence("gone", record("gone", now - 9000), 1)
    await broker.put_presence("junk", b"not json", 5000)  # skipped, not fatal
    await asyncio.sleep(0.01)  # "gone" expires
    workers = await live_workers(broker)
    assert [w.worker_id for w in workers] == ["a", "b"]
    doc = worker_doc(workers[0], now)
    assert doc["processed"] == 7 and doc["last_beat_at"] == now - 500
    assert doc["last_beat_age_s"] == 0.5 and doc["uptime_s"] == 5.5
    assert doc["expires_at"] == now + 4500
    await broker.drop_presence("a")
    assert [w.worker_id for w in await live_workers(broker)] == ["b"]


async def test_recent_agents_from_heartbeats(unique: str) -> None:
    broker = await connect_broker(f"memory://{unique}")
    now = now_ms()
    await broker.publish_one(HEARTBEATS, beat("w1", "worker.heartbeat", now - 1000))
    await broker.publish_one(HEARTBEATS, b"garbage")
    recent = RecentAgents(window_ms=60_000)
    assert await recent.refresh(broker, now) == {"a"}
    other = WorkerInfo(worker_id="w2", host="h", pid=1, agents=["b"], version="0")
    old = RuntimeEvent(type="worker.stopped", worker_id="w2", ts=now - 120_000,
                       payload=msgspec.to_builtins(other))  # fmt: skip
    await broker.publish_one(HEARTBEATS, encode(old))  # outside the window
    assert await recent.refresh(broker, now_ms()) == {"a"}  # incremental: only what is new


def test_replay_strips_dead_letter_headers() -> None:
    headers = {
        "content-type": "application/json", "murmur-sig": "ab", "murmur-kid": "k1",
        "murmur-dead-reason": "failed", "murmur-dead-error": "x", "murmur-dead-at": "1",
        "murmur-dead-worker": "w", "murmur-delivery-count": "5", "murmur-attempt": "5",
    }  # fmt: skip
    assert replay_headers(headers) == {
        "content-type": "application/json",
        "murmur-sig": "ab",
        "murmur-kid": "k1",
    }


async def test_health_reflects_a_stalled_loop(unique: str) -> None:
    import asyncio

    from murmur.demo_agents import wordcount

    worker = Worker(broker=f"memory://{unique}", agents=[wordcount], heartbeat_seconds=0)
    server = MetricsServer(worker, 0, "127.0.0.1")
    await server.start()
    try:
        check = HealthCheck(worker, asyncio.get_running_loop(), server.probe)
        assert (await asyncio.to_thread(check.health))[0] == 503  # not connected yet
        assert check.ready()[0] == 503
        await worker.start()
        await asyncio.sleep(1.1)  # past the ping cache
        assert (await asyncio.to_thread(check.health))[0] == 200
        assert check.ready()[0] == 200
        server.probe.last_tick = time.monotonic() - 10  # as if the loop had been stuck
        code, body = await asyncio.to_thread(check.health)
        assert code == 503 and "stalled" in body["reason"]
    finally:
        await worker.stop()
        await server.stop()


def test_reload_without_the_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from murmur.cli import app

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # as if not installed
    result = CliRunner().invoke(app, ["worker", "cliapp", "--reload", "-b", "redis://x:1"])
    assert result.exit_code == 2
    assert "pip install 'murmur[reload]'" in result.output


def test_the_worker_process_collects_garbage_less_often() -> None:
    """Young collections every 700 allocations cost a busy worker CPU for little gain."""
    import gc

    from murmur.cli.worker import GC_YOUNG_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0  # startup objects are out of the collector's way
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
