"""A/B one change: murmur's worker at a base revision against the working tree.

    python benchmarks/ab.py redis://localhost:6379                    # no-op, HEAD vs tree
    python benchmarks/ab.py nats://localhost:4222 --ms 20 --tasks 3000
    python benchmarks/ab.py kafka://localhost:9092 --base main~3 --latency

On a shared or small machine two runs minutes apart differ by 10-20 %, more than most
single changes are worth. This starts one worker process per side (the base revision is
checked out into a temporary git worktree, where its worker runs from),
then measures the sides alternately, repeat after repeat, with the same publisher
(murmur's Client at the working tree), so that load drifts hit both alike. It prints
the median and range of each side: tasks/s and worker CPU µs per task (or, with
``--latency``, the p50/p99 of sequential round trips).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from murmur.bench.drivers import Driver  # noqa: E402
from murmur.bench.fleet import Fleet  # noqa: E402
from murmur.bench.stats import percentile  # noqa: E402
from murmur.bench.suite import WorkerRequest, murmur_system  # noqa: E402

Side = tuple[Driver, Fleet]


async def start_side(
    url: str, workdir: Path, pythonpath: str | None, args: argparse.Namespace
) -> Side:
    system = murmur_system("ab", url)
    agent = "ab" + uuid.uuid4().hex[:10]
    request = WorkerRequest(url, agent, f"{agent}-w", args.concurrency, args.prefetch, None)
    spec = system.worker(request)
    # `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    spec = replace(spec, cwd=pythonpath or str(ROOT))
    if pythonpath is not None:
        spec = replace(spec, env={**spec.env, "PYTHONPATH": pythonpath})
    driver = system.driver(url, agent, None)
    await driver.start()
    fleet = Fleet([spec], workdir)
    await fleet.start()
    return driver, fleet


async def throughput(side: Side, n: int, ms: float) -> tuple[float, float]:
    driver, fleet = side
    cpu0, t0 = fleet.cpu_seconds(), time.monotonic()
    ok = await driver.run_batch([ms] * n, 2000, lambda _: None)
    elapsed, cpu = time.monotonic() - t0, fleet.cpu_seconds() - cpu0
    if ok != n:
        raise SystemExit(f"only {ok} of {n} tasks succeeded")
    return n / elapsed, cpu / n * 1e6


async def latency(side: Side, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await side[0].round_trip(0.0)
        samples.append((time.perf_counter() - t0) * 1000)
    return percentile(samples, 50), percentile(samples, 99)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="murmur-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base],
            check=True,
        )
        sides: dict[str, Side] = {}
        try:
            sides["base"] = await start_side(args.url, Path(tmp), str(base), args)
            sides["tree"] = await start_side(args.url, Path(tmp), None, args)
            for side in sides.values():  # warm up: groups joined, code paths hot
                await throughput(side, 1000, args.ms)
            rows: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
            for r in range(args.repeats):
                order = list(sides) if r % 2 == 0 else list(reversed(sides))
                for name in order:
                    if args.latency:
                        rows[name].append(await latency(sides[name], args.tasks))
                    else:
                        rows[name].append(await throughput(sides[name], args.tasks, args.ms))
            report(rows, args)
        finally:
            for driver, fleet in sides.values():
                fleet.stop()
                await driver.close()
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)])


def minmax(values: list[float]) -> tuple[float, float]:
    return min(values), max(values)


def report(rows: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    def fmt(values: list[float], digits: int) -> str:
        mid, low, high = (f"{v:,.{digits}f}" for v in (statistics.median(values), *minmax(values)))
        return f"{mid} [{low}-{high}]"

    for name, values in rows.items():
        first, second = [v[0] for v in values], [v[1] for v in values]
        label = f"{name} ({args.base})" if name == "base" else "working tree"
        if args.latency:
            print(f"{label:>24}: p50 {fmt(first, 3)} ms   p99 {fmt(second, 3)} ms")
            continue
        line = f"{label:>24}: {fmt(first, 0)} tasks/s   CPU {fmt(second, 1)} µs/task"
        if args.ms:
            ideal = args.concurrency * 1000 / args.ms
            line += f"   {fmt([100 * v / ideal for v in first], 1)} % of ideal"
        print(line)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("url", help="broker URL (redis://, nats://, kafka://)")
    p.add_argument("--base", default="HEAD", help="git revision to compare with (default HEAD)")
    p.add_argument("--tasks", type=int, help="tasks per measurement (10,000; --latency 500)")
    p.add_argument("--ms", type=float, default=0.0, help="handler sleep in ms (0: no-op)")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--prefetch", type=int, default=50)
    p.add_argument("--latency", action="store_true", help="sequential round trips instead")
    os.environ.setdefault("MURMUR_LOG_LEVEL", "warning")
    parsed = p.parse_args()
    if parsed.tasks is None:
        parsed.tasks = 500 if parsed.latency else 10_000
    asyncio.run(main(parsed))
