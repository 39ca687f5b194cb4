"""Systems, scenarios and the measurement loop shared by ``murmur bench`` and the runner.

A :class:`System` is something to measure on one broker: how to start one of its worker
processes and how to publish to it. Every measurement starts its own fleet on fresh
topics (a unique agent name), warms it up, measures, and stops it; repeats interleave
the systems, so a comparison within one repeat sees the same machine load. Every record
carries ``os.getloadavg()`` from before and after: the machine may be shared.

Scenarios:

``noop``     no-op throughput with one worker, worker CPU per task and RSS
``latency``  sequential round trips (one task in flight): p50/p90/p99/max
``io``       ``io_ms`` tasks at ``concurrency`` per worker against the ideal
``scale``    no-op throughput with each worker count of ``workers``
``signing``  no-op throughput with signing on (compare with ``noop``)
``memory``   ``memory_tasks`` no-op tasks on a fresh worker: RSS after 10% and at the end
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import platform
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from murmur._version import __version__
from murmur.bench.cleanup import remove_agent_data
from murmur.bench.drivers import Driver, MurmurDriver, Progress
from murmur.bench.fleet import Fleet, WorkerSpec, murmur_worker_argv
from murmur.bench.stats import Spread, percentile, spread
from murmur.config import SIGNING_KEYS

SCENARIOS = ("noop", "latency", "io", "scale", "signing", "memory")
AGENT_ENV = "MURMUR_BENCH_AGENT"


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """What a system needs to start one worker process."""

    url: str
    agent: str
    consumer_id: str
    concurrency: int
    prefetch: int
    signing_key: bytes | None


@dataclass(frozen=True, slots=True)
class System:
    """One thing to measure on one broker."""

    name: str
    broker: str
    url: str
    worker: Callable[[WorkerRequest], WorkerSpec]
    driver: Callable[[str, str, bytes | None], Driver]
    signing: bool = True  # can be measured with signing on
    note: str = ""
    scenarios: tuple[str, ...] | None = None  # None: every scenario of the run
    size: float = 1.0  # scales task counts (slow comparators get fewer tasks)

    @property
    def label(self) -> str:
        return f"{self.name}/{self.broker}"


def _murmur_worker(req: WorkerRequest, python: str | None) -> WorkerSpec:
    env = {AGENT_ENV: req.agent, "MURMUR_LOG_FORMAT": "json", SIGNING_KEYS: ""}
    if req.signing_key is not None:
        env[SIGNING_KEYS] = req.signing_key.hex()
    argv = murmur_worker_argv(
        req.url, req.consumer_id, concurrency=req.concurrency, prefetch=req.prefetch, python=python
    )
    return WorkerSpec(argv, env=env)


def _murmur_driver(url: str, agent: str, key: bytes | None) -> Driver:
    return MurmurDriver(url, agent, signing_key=key)


def murmur_system(broker: str, url: str, python: str | None = None) -> System:
    """murmur itself: ``murmur worker murmur.bench.app`` driven by murmur's Client.

    ``python`` runs the workers (default: this interpreter); see ``worker_python`` in
    ``benchmarks/run.py`` for why a run may want a separate environment.
    """
    worker = functools.partial(_murmur_worker, python=python)
    return System("murmur", broker, url, worker, _murmur_driver)


@dataclass
class Settings:
    """Sizes of one run. The defaults are the full run; ``murmur bench --quick`` shrinks them."""

    tasks: int = 20_000
    io_tasks: int = 10_000
    io_ms: float = 20.0
    latency_tasks: int = 2_000
    memory_tasks: int = 100_000
    warmup: int = 1_000
    concurrency: int = 50
    prefetch: int = 50
    window: int = 2_000
    workers: tuple[int, ...] = (1, 2, 4)
    repeats: int = 1
    scenarios: tuple[str, ...] = SCENARIOS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.scenarios) - set(SCENARIOS))
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(unknown)}; choose from {SCENARIOS}")
        for name in ("tasks", "io_tasks", "latency_tasks", "memory_tasks", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.prefetch < 1 or self.repeats < 1 or self.window < 1:
            raise ValueError("prefetch, repeats and window must be >= 1")
        if not self.workers or min(self.workers) < 1:
            raise ValueError("workers must be a list of counts >= 1")


class Reporter(Protocol):
    """Where progress goes (a rich progress bar in the CLI, nothing in tests)."""

    def begin(self, label: str, total: int) -> Progress: ...

    def end(self) -> None: ...

    def note(self, message: str) -> None: ...


class SilentReporter:
    def begin(self, label: str, total: int) -> Progress:
        return lambda _n: None

    def end(self) -> None:
        pass

    def note(self, message: str) -> None:
        pass


def machine_info() -> dict[str, Any]:
    """Where the figures came from: a result without its machine means little."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "murmur": __version__,
        "loadavg_at_start": list(os.getloadavg()),
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


_TIMER_PROBE = """
import asyncio, sys, time
ms, lanes, rounds = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
async def lane():
    for _ in range(rounds):
        await asyncio.sleep(ms / 1000)
async def main():
    t = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(lanes)))
    print(rounds * ms / 1000 / (time.perf_counter() - t))
asyncio.run(main())
"""


async def timer_reference(ms: float, lanes: int, seconds: float = 1.0) -> float:
    """What fraction of the I/O ideal a bare asyncio process reaches on this machine now.

    ``lanes`` coroutines each sleep ``ms`` in a loop for about ``seconds``, in a fresh
    process (scheduled like a worker). It is the ceiling of the I/O-bound figure that no
    broker or framework can beat: on a loaded machine timers fire late."""
    rounds = max(5, int(seconds * 1000 / ms))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _TIMER_PROBE, str(ms), str(lanes), str(rounds),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return float(out.decode().strip() or "nan")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Measurement:
    """One figure set from one fleet and one scenario in one repeat."""

    system: str
    broker: str
    scenario: str
    workers: int
    signing: bool
    repeat: int
    figures: dict[str, float]
    loadavg_before: list[float]
    loadavg_after: list[float]
    at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    @property
    def key(self) -> tuple[str, str, str, int, bool]:
        return (self.system, self.broker, self.scenario, self.workers, self.signing)


class Runner:
    """Runs :class:`Settings` over systems and collects :class:`Measurement` records."""

    def __init__(
        self,
        systems: Sequence[System],
        settings: Settings,
        reporter: Reporter | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.systems = list(systems)
        self.settings = settings
        self.reporter = reporter or SilentReporter()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="murmur-bench-"))
        self.records: list[Measurement] = []
        self.errors: list[dict[str, str]] = []
        self.signing_key = secrets.token_bytes(32)
        self.machine = machine_info()

    # plan --------------------------------------------------------------------------------

    def plan(self, system: System, repeat: int) -> Iterator[tuple[int, bool, tuple[str, ...]]]:
        """(workers, signing, scenarios) per fleet this system runs in one repeat."""
        wanted = tuple(
            s for s in self.settings.scenarios if system.scenarios is None or s in system.scenarios
        )
        first = tuple(s for s in ("latency", "noop", "io") if s in wanted)
        if "noop" not in first and {"scale", "signing"} & set(wanted):
            first = (*first, "noop")  # the baseline the others are compared with
        if first:
            yield 1, False, first
        if "signing" in wanted and system.signing:
            yield 1, True, ("noop",)
        if "scale" in wanted:
            for n in self.settings.workers:
                if n != 1:
                    yield n, False, ("noop",)
        if "memory" in wanted and repeat == 0:
            yield 1, False, ("memory",)

    async def run(self) -> list[Measurement]:
        for repeat in range(self.settings.repeats):
            for system in self.systems:
                for workers, signing, scenarios in self.plan(system, repeat):
                    try:
                        await self._fleet_run(system, repeat, workers, signing, scenarios)
                    except Exception as exc:
                        what = f"{system.label} workers={workers} signing={signing}"
                        self.errors.append(
                            {"system": system.label, "what": what, "error": f"{exc}"[:2000]}
                        )
                        self.reporter.note(f"[red]failed[/] {what}: {str(exc)[:500]}")
        return self.records

    # one fleet ---------------------------------------------------------------------------

    async def _fleet_run(
        self, system: System, repeat: int, workers: int, signing: bool, scenarios: Sequence[str]
    ) -> None:
        s = self.settings
        agent = "bench" + secrets.token_hex(5)
        key = self.signing_key if signing else None
        warmup = _sized(s.warmup, system.size)
        specs = [
            system.worker(
                WorkerRequest(system.url, agent, f"{agent}-w{i}", s.concurrency, s.prefetch, key)
            )
            for i in range(workers)
        ]
        driver = system.driver(system.url, agent, key)
        await driver.start()  # topics exist before the workers join
        try:
            fleet = Fleet(specs, self.workdir / agent)
            async with fleet:
                tag = f"{system.label} x{workers}{' signed' if signing else ''}"
                await self._batch(driver, fleet, f"{tag} warm-up", [0.0] * warmup)
                for scenario in scenarios:
                    before = _load()
                    figures = await self._scenario(
                        scenario, driver, fleet, tag, workers, system.size
                    )
                    fleet.check_alive()
                    self.records.append(
                        Measurement(
                            system.name,
                            system.broker,
                            scenario,
                            workers,
                            signing,
                            repeat,
                            figures,
                            before,
                            _load(),
                        )
                    )
        finally:
            await driver.close()
            await remove_agent_data(system.url, agent)

    async def _batch(self, driver: Driver, fleet: Fleet, label: str, values: list[float]) -> int:
        tick = self.reporter.begin(label, len(values))
        try:
            ok = await driver.run_batch(values, self.settings.window, tick)
        finally:
            self.reporter.end()
        fleet.check_alive()
        if ok != len(values):
            raise RuntimeError(f"{label}: {len(values) - ok} of {len(values)} tasks failed")
        return ok

    async def _scenario(
        self,
        scenario: str,
        driver: Driver,
        fleet: Fleet,
        tag: str,
        workers: int,
        size: float = 1.0,
    ) -> dict[str, float]:
        s = self.settings
        if scenario == "latency":
            return await self._latency(driver, tag, _sized(s.latency_tasks, size))
        if scenario == "memory":
            return await self._memory(driver, fleet, tag)
        n, ms = (s.tasks, 0.0) if scenario == "noop" else (s.io_tasks, s.io_ms)
        n = _sized(n, size)
        cpu0 = fleet.cpu_seconds()
        t0 = time.perf_counter()
        await self._batch(driver, fleet, f"{tag} {scenario}", [ms] * n)
        elapsed = time.perf_counter() - t0
        cpu = fleet.cpu_seconds() - cpu0
        figures = {
            "tasks": n,
            "seconds": elapsed,
            "per_s": n / elapsed,
            "cpu_us_per_task": cpu * 1e6 / n,
            "worker_cpu_share": cpu / elapsed / workers,
            "rss_mb": max(fleet.rss_bytes()) / 2**20,
        }
        if scenario == "io":
            ideal = s.concurrency * workers * 1000 / s.io_ms
            figures |= {"ideal_per_s": ideal, "of_ideal": n / elapsed / ideal}
            figures["bare_asyncio_of_ideal"] = await timer_reference(s.io_ms, s.concurrency)
        return figures

    async def _latency(self, driver: Driver, tag: str, n: int) -> dict[str, float]:
        tick = self.reporter.begin(f"{tag} latency", n)
        samples: list[float] = []
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                await driver.round_trip(0.0)
                samples.append((time.perf_counter() - t0) * 1000)
                tick(1)
        finally:
            self.reporter.end()
        return {
            "tasks": n,
            "p50_ms": percentile(samples, 50),
            "p90_ms": percentile(samples, 90),
            "p99_ms": percentile(samples, 99),
            "max_ms": max(samples),
            "mean_ms": sum(samples) / n,
        }

    async def _memory(self, driver: Driver, fleet: Fleet, tag: str) -> dict[str, float]:
        """RSS after the first tenth of the tasks and after all of them: flat is good."""
        n = self.settings.memory_tasks
        first = max(1, n // 10)
        await self._batch(driver, fleet, f"{tag} memory 1/10", [0.0] * first)
        early = max(fleet.rss_bytes()) / 2**20
        await asyncio.sleep(0)
        await self._batch(driver, fleet, f"{tag} memory", [0.0] * (n - first))
        late = max(fleet.rss_bytes()) / 2**20
        return {
            "tasks": n,
            "rss_early_mb": early,
            "early_after": first,
            "rss_mb": late,
            "rss_growth_mb": late - early,
        }


def _sized(n: int, size: float) -> int:
    return max(min(n, 50), int(n * size))


# results -------------------------------------------------------------------------------


def summarize(records: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Group repeats: one row per (system, broker, scenario, workers, signing), every
    figure as median/min/max over the repeats."""
    groups: dict[tuple[str, str, str, int, bool], list[Measurement]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    rows = []
    for (system, broker, scenario, workers, signing), ms in groups.items():
        names = sorted({k for m in ms for k in m.figures})
        figures = {k: spread(m.figures[k] for m in ms if k in m.figures).as_dict() for k in names}
        rows.append(
            {
                "system": system,
                "broker": broker,
                "scenario": scenario,
                "workers": workers,
                "signing": signing,
                "repeats": len(ms),
                "figures": figures,
                "loadavg": [m.loadavg_before[0] for m in ms],
            }
        )
    return rows


def figure(
    records: Sequence[Measurement],
    system: str,
    broker: str,
    scenario: str,
    name: str,
    *,
    workers: int = 1,
    signing: bool = False,
) -> dict[int, float]:
    """One figure per repeat (repeat index -> value)."""
    return {
        r.repeat: r.figures[name]
        for r in records
        if r.key == (system, broker, scenario, workers, signing) and name in r.figures
    }


def spread_of(values: dict[int, float]) -> Spread | None:
    return spread(values.values()) if values else None


def document(
    runner: Runner, systems: Sequence[System], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything a run produced, as one JSON-serialisable document."""
    return {
        "schema": "murmur-bench/1",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": runner.machine | {"loadavg_at_end": list(os.getloadavg())},
        "settings": asdict(runner.settings),
        "systems": [
            {"name": s.name, "broker": s.broker, "note": s.note, "size": s.size} for s in systems
        ],
        "records": [asdict(r) for r in runner.records],
        "summary": summarize(runner.records),
        "errors": runner.errors,
        **(extra or {}),
    }
