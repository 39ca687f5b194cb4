"""Chaos runs: prove nothing is lost while workers and brokers die (docs/reliability.md).

    python benchmarks/chaos.py kill-storm --broker redis      # 3 workers, 10,000 tasks
    python benchmarks/chaos.py broker-restart --broker nats
    python benchmarks/chaos.py freeze --broker kafka          # SIGSTOP / SIGCONT
    python benchmarks/chaos.py memory --broker redis          # 100,000 no-op tasks, RSS
    python benchmarks/chaos.py all --broker redis,nats,kafka --json results.json

``--broker`` takes redis / nats / kafka (a server is found or started exactly as the
test suite does: MURMUR_TEST_*_URL, the default port, or a wheel-shipped server) or a
URL. Runs are bounded in time and talk to loopback only. Each prints one line of
figures and returns them as a dict; tests/chaos runs smaller versions with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from murmur import Client  # noqa: E402
from murmur.errors import BrokerUnavailable  # noqa: E402


def broker_url(name: str) -> tuple[str, Callable[[], None] | None]:
    """A URL for ``name`` (redis/nats/kafka, or a URL), with a cleanup if we started it."""
    if "://" in name:
        return name, None
    from tests.support.servers import resolve

    found = resolve(name)  # type: ignore[arg-type]
    return found.url, found.close


@dataclass
class Fleet:
    """Worker subprocesses hosting benchmarks/chaos_app.py, with a shared run log."""

    url: str
    agent: str
    workdir: Path
    concurrency: int = 10
    reclaim_ms: int = 2000
    record_runs: bool = True
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def runlog(self) -> Path:
        return self.workdir / "runs.log"

    def start(self, consumer_id: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "MURMUR_CHAOS_RUNLOG": str(self.runlog) if self.record_runs else "",
            "MURMUR_CHAOS_AGENT": self.agent,
            "MURMUR_LOG_FORMAT": "json",
            "MURMUR_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
        }
        log = open(self.workdir / f"{consumer_id}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "murmur", "worker", "benchmarks.chaos_app",
                "--broker", self.url, "--consumer-id", consumer_id,
                "--concurrency", str(self.concurrency), "--prefetch", str(self.concurrency),
                "--reclaim-ms", str(self.reclaim_ms), "--heartbeat", "1",
            ],
            env=env, cwd=ROOT, stdout=log, stderr=log,
        )  # fmt: skip
        self.procs[consumer_id] = proc
        return proc

    def kill(self, consumer_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[consumer_id]
        if proc.poll() is None:
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait(10)
            del self.procs[consumer_id]

    def runs(self) -> Counter[str]:
        """Executions started per task id."""
        if not self.runlog.exists():
            return Counter()
        return Counter(
            line.split()[1]
            for line in self.runlog.read_text().splitlines()
            if line.startswith("start")
        )

    def stop_all(self, timeout: float = 30) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def _collect(
    client: Client, agent: str, inputs: list[float], max_in_flight: int
) -> tuple[list[Any], float]:
    """Submit everything, wait for every result; (results, seconds after last submit)."""
    handles = []
    for i in range(0, len(inputs), 500):
        handles += await client.submit_many(agent, inputs[i : i + 500])
        while sum(not h.done() for h in handles) > max_in_flight:
            await asyncio.sleep(0.05)
    submitted_at = time.monotonic()
    results = [await h.result(timeout=600) for h in handles]
    assert [r.task_id for r in results] == [h.task_id for h in handles], "results cross-wired"
    return results, time.monotonic() - submitted_at


def _shown_twice(results: list[Any]) -> int:
    """Results the caller received beyond one per task id."""
    return len(results) - len({r.task_id for r in results})


def _report(name: str, figures: dict[str, Any]) -> dict[str, Any]:
    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


async def kill_storm(
    url: str,
    *,
    tasks: int = 10_000,
    workers: int = 3,
    every: tuple[float, float] = (2.0, 4.0),
    concurrency: int = 5,
    seed: int = 1,
) -> dict[str, Any]:
    """SIGKILL a random worker every few seconds and restart it (same consumer id half the
    time, a new one otherwise) while ``tasks`` tasks of 5-50 ms run."""
    rnd = random.Random(seed)
    agent = "storm" + os.urandom(4).hex()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(url, agent, Path(tmp), concurrency=concurrency)
        names = [f"{agent}-w{i}" for i in range(workers)]
        for n in names:
            fleet.start(n)
        kills, same_id = 0, 0
        done = asyncio.Event()

        async def storm() -> None:
            nonlocal kills, same_id
            while not done.is_set():
                await asyncio.sleep(rnd.uniform(*every))
                if done.is_set():
                    return
                victim = rnd.choice(sorted(fleet.procs))
                fleet.kill(victim)
                kills += 1
                if rnd.random() < 0.5:
                    same_id += 1
                    fleet.start(victim)
                else:
                    fleet.start(f"{agent}-r{kills}")

        t0 = time.monotonic()
        async with Client(url) as client:
            storm_task = asyncio.create_task(storm())
            inputs = [float(rnd.randint(5, 50)) for _ in range(tasks)]
            results, drain = await _collect(client, agent, inputs, max_in_flight=2000)
            got = sum(r.ok for r in results)
            done.set()
            await storm_task
            dropped = client.stats.duplicate_results
        elapsed = time.monotonic() - t0
        fleet.stop_all()
        runs = fleet.runs()
    return _report(
        "kill-storm",
        {
            "submitted": tasks,
            "results": got,
            "lost": tasks - got,
            "duplicates_shown_to_caller": _shown_twice(results),
            "duplicate_results_dropped_by_client": dropped,
            "duplicate_executions": sum(n - 1 for n in runs.values() if n > 1),
            "never_ran": tasks - len(runs),
            "kills": kills,
            "restarts_same_id": same_id,
            "seconds": round(elapsed, 1),
            "drain_after_last_submit_s": round(drain, 1),
        },
    )


async def broker_restart(
    kind: str, *, tasks: int = 3000, workers: int = 2, down_s: float = 2.0
) -> dict[str, Any]:
    """Restart the broker (a private server: Redis with AOF fsync always, NATS with a file
    store) a third of the way into a run; everything must complete, nothing lost."""
    from tests.support.servers import OwnedServer

    agent = "restart" + os.urandom(4).hex()
    server = OwnedServer(kind, persistent=True)  # type: ignore[arg-type]
    server.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fleet = Fleet(server.url, agent, Path(tmp))
            for i in range(workers):
                fleet.start(f"{agent}-w{i}")
            t0 = time.monotonic()
            async with Client(server.url) as client:
                handles = []
                for i in range(0, tasks, 500):
                    batch = [20.0] * min(500, tasks - i)
                    handles += await _retrying(
                        lambda batch=batch: client.submit_many(agent, batch)  # type: ignore[misc]
                    )
                while sum(h.done() for h in handles) < tasks // 3:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(server.stop)
                await asyncio.sleep(down_s)
                await asyncio.to_thread(server.start)
                restarted = time.monotonic()
                results = [await h.result(timeout=300) for h in handles]
            fleet.stop_all()
            runs = fleet.runs()
    finally:
        server.close()
    got = sum(r.ok for r in results)
    return _report(
        f"broker-restart[{kind}]",
        {
            "submitted": tasks,
            "results": got,
            "lost": tasks - got,
            "duplicate_executions": sum(n - 1 for n in runs.values() if n > 1),
            "down_s": down_s,
            "recovered_in_s": round(time.monotonic() - restarted, 1),
            "seconds": round(time.monotonic() - t0, 1),
        },
    )


async def _retrying(call: Callable[[], Awaitable[Any]], attempts: int = 50) -> Any:
    for i in range(attempts):
        try:
            return await call()
        except BrokerUnavailable:
            await asyncio.sleep(0.2 * (i + 1))
    return await call()


async def freeze(
    url: str, *, tasks: int = 40, task_ms: float = 1500, reclaim_ms: int = 2000
) -> dict[str, Any]:
    """SIGSTOP a worker holding tasks for 3x the reclaim window: a live worker takes them;
    after SIGCONT the frozen one finishes its copies, and the caller still sees one result
    per task (the late duplicates are dropped by the client)."""
    agent = "freeze" + os.urandom(4).hex()
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(url, agent, Path(tmp), concurrency=10, reclaim_ms=reclaim_ms)
        frozen = f"{agent}-frozen"
        fleet.start(frozen)
        async with Client(url) as client:
            await client.run(agent, 0.0, timeout=60)  # the frozen one is up and consuming
            handles = await client.submit_many(agent, [task_ms] * tasks)
            deadline = time.monotonic() + 30
            while not _started_by(fleet, frozen) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            fleet.kill(frozen, signal.SIGSTOP)
            held = _started_by(fleet, frozen)
            fleet.start(f"{agent}-live")
            await asyncio.sleep(3 * reclaim_ms / 1000)
            fleet.kill(frozen, signal.SIGCONT)
            results = [await h.result(timeout=120) for h in handles]
            await asyncio.sleep(task_ms / 1000 + 1)  # the resumed worker's late results land
            dropped = client.stats.duplicate_results
        fleet.stop_all()
        runs = fleet.runs()
    return _report(
        "freeze",
        {
            "submitted": tasks,
            "results": sum(r.ok for r in results),
            "held_by_frozen_worker": len(held),
            "duplicate_executions": sum(n - 1 for n in runs.values() if n > 1),
            "late_duplicate_results_dropped_by_client": dropped,
            "duplicates_shown_to_caller": _shown_twice(results),
        },
    )


def _started_by(fleet: Fleet, worker: str) -> set[str]:
    if not fleet.runlog.exists():
        return set()
    return {
        parts[1]
        for parts in (line.split() for line in fleet.runlog.read_text().splitlines())
        if parts[0] == "start" and parts[2] == worker
    }


async def memory(
    url: str, *, tasks: int = 100_000, checkpoints: tuple[int, ...] = (10_000,)
) -> dict[str, Any]:
    """``tasks`` no-op tasks through one worker; its RSS at each checkpoint and at the end."""
    import psutil

    agent = "mem" + os.urandom(4).hex()
    marks = sorted({*checkpoints, tasks})
    rss: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Fleet(url, agent, Path(tmp), concurrency=50, record_runs=False)
        proc = fleet.start(f"{agent}-w")
        ps = psutil.Process(proc.pid)
        t0 = time.monotonic()
        async with Client(url) as client:
            await client.run(agent, 0.0, timeout=60)
            rss["start_mb"] = round(ps.memory_info().rss / 2**20, 1)
            done = 0
            for mark in marks:
                async for r in client.as_completed(
                    agent, [0.0] * (mark - done), max_in_flight=2000
                ):
                    assert r.ok
                done = mark
                rss[f"at_{mark}_mb"] = round(ps.memory_info().rss / 2**20, 1)
        fleet.stop_all()
    elapsed = time.monotonic() - t0
    return _report(
        "memory",
        {
            "tasks": tasks,
            **rss,
            "seconds": round(elapsed, 1),
            "tasks_per_s": round(tasks / elapsed),
        },
    )


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", choices=["kill-storm", "broker-restart", "freeze", "memory", "all"])
    parser.add_argument("--broker", default="redis", help="redis,nats,kafka or a URL (comma list)")
    parser.add_argument("--tasks", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    runs = ["kill-storm", "broker-restart", "freeze", "memory"] if args.run == "all" else [args.run]
    out: dict[str, Any] = {}
    for name in args.broker.split(","):
        async with AsyncExitStack() as stack:
            url, close = broker_url(name)
            if close is not None:
                stack.callback(close)
            for run in runs:
                kw = {"tasks": args.tasks} if args.tasks else {}
                if run == "kill-storm":
                    out[f"{name}/kill-storm"] = await kill_storm(url, **kw)
                elif run == "broker-restart":
                    if name == "kafka":
                        out[f"{name}/broker-restart"] = {
                            "skipped": "Tansu is memory-only: a restart loses every record"
                        }
                        continue
                    out[f"{name}/broker-restart"] = await broker_restart(name, **kw)
                elif run == "freeze":
                    out[f"{name}/freeze"] = await freeze(url, **kw)
                else:
                    out[f"{name}/memory"] = await memory(url, **kw)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    asyncio.run(main())
