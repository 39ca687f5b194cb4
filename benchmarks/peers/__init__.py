"""Other frameworks as optional comparators (the ``bench`` extra installs none of them by
force: a peer whose package is missing is skipped with a note).

Each peer runs one worker process of its own kind on Redis and is published to with its
own client, the way its documentation shows; the measurement code is murmur's
(:mod:`murmur.bench.suite`), so the figures are comparable with murmur's and the
ceiling's. Peers do not speak murmur's wire format and are not signed.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from murmur.bench.drivers import Driver
from murmur.bench.fleet import WorkerSpec
from murmur.bench.suite import AGENT_ENV, System, WorkerRequest

ROOT = Path(__file__).resolve().parents[2]
READY = "peer ready"
URL_ENV = "MURMUR_BENCH_PEER_URL"
PEERS = ("taskiq", "faststream", "faststream-mw50", "celery")
# Peers are compared on one worker; their slower rates get smaller task counts (`size`).
_PEER_SCENARIOS = ("noop", "latency", "io")
_NEEDS = {
    "taskiq": ("taskiq", "taskiq_redis"),
    "faststream": ("faststream",),
    "faststream-mw50": ("faststream",),
    "celery": ("celery",),
}


def _env(req: WorkerRequest, **extra: str) -> dict[str, str]:
    return {AGENT_ENV: req.agent, URL_ENV: req.url, "PYTHONPATH": str(ROOT), **extra}


def _taskiq_worker(req: WorkerRequest) -> WorkerSpec:
    argv = [
        sys.executable, "-m", "taskiq", "worker", "benchmarks.peers.taskiq_peer:broker",
        "--workers", "1", "--max-async-tasks", str(req.concurrency),
        "--max-prefetch", str(req.prefetch), "--no-configure-logging",
    ]  # fmt: skip
    return WorkerSpec(argv, ready=READY, env=_env(req), cwd=str(ROOT))


def _faststream_worker(max_workers: int) -> Callable[[WorkerRequest], WorkerSpec]:
    def worker(req: WorkerRequest) -> WorkerSpec:
        argv = [sys.executable, "-m", "faststream", "run", "benchmarks.peers.faststream_peer:app"]
        env = _env(
            req, MURMUR_BENCH_FS_WORKERS=str(max_workers), MURMUR_BENCH_FS_ID=req.consumer_id
        )
        return WorkerSpec(argv, ready=READY, env=env, cwd=str(ROOT))

    return worker


def _celery_worker(req: WorkerRequest) -> WorkerSpec:
    argv = [
        sys.executable, "-m", "celery", "-A", "benchmarks.peers.celery_peer", "worker",
        "-P", "threads", "-c", str(req.concurrency), "-Q", f"celery.{req.agent}",
        "-n", f"{req.consumer_id}@%h", "-l", "warning",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    return WorkerSpec(argv, ready=READY, env=_env(req), cwd=str(ROOT))


def _driver(module: str) -> Callable[[str, str, bytes | None], Driver]:
    def make(url: str, agent: str, key: bytes | None) -> Driver:
        mod = importlib.import_module(f"benchmarks.peers.{module}")
        driver: Driver = mod.PeerDriver(url, agent)
        return driver

    return make


def available(name: str) -> str | None:
    """None when ``name`` can run here, else why not."""
    missing = [m for m in _NEEDS[name] if importlib.util.find_spec(m) is None]
    return f"{name} skipped: pip install {' '.join(missing)}" if missing else None


def peer_system(name: str, url: str) -> System:
    """The peer ``name`` (one of :data:`PEERS`) on the Redis server at ``url``."""
    if name == "taskiq":
        return System(
            "taskiq", "redis", url, _taskiq_worker, _driver("taskiq_peer"), signing=False,
            note="taskiq-redis RedisStreamBroker, 50 async tasks, result polled every 1 ms",
            scenarios=_PEER_SCENARIOS, size=0.25,
        )  # fmt: skip
    if name == "faststream":
        return System(
            "faststream", "redis", url, _faststream_worker(1), _driver("faststream_peer"),
            signing=False, note="FastStream stream subscriber, defaults (handlers one at a time)",
            scenarios=_PEER_SCENARIOS, size=0.1,
        )  # fmt: skip
    if name == "faststream-mw50":
        return System(
            "faststream-mw50", "redis", url, _faststream_worker(50), _driver("faststream_peer"),
            signing=False, note="FastStream stream subscriber, max_workers=50",
            scenarios=_PEER_SCENARIOS, size=0.25,
        )  # fmt: skip
    if name == "celery":
        return System(
            "celery", "redis", url, _celery_worker, _driver("celery_peer"), signing=False,
            note="Celery, Redis broker and result backend, threads pool of 50",
            scenarios=_PEER_SCENARIOS, size=0.25,
        )  # fmt: skip
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
