"""Prometheus ``/metrics`` plus ``/health`` and ``/ready`` for one worker process.

Nothing is recorded per task for this: a custom collector reads ``worker.stats`` (plain
counters the worker keeps anyway) at scrape time. The HTTP server runs in a background
thread so a busy event loop never blocks a scrape, yet ``/health`` still reflects the
loop: a small asyncio task ticks every half second and health fails when its last tick
is stale. The broker check awaits ``broker.ping()`` on the worker's loop with a short
timeout and caches the answer for a second, so probes cost at most one round trip per
second however often they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from murmur.errors import ConfigurationError
from murmur.worker.stats import BUCKETS, WorkerStats

if TYPE_CHECKING:
    from murmur.worker import Worker

STALE_AFTER_S = 5.0  # no loop tick for this long -> /health is 503
PING_TIMEOUT_S = 1.0
PING_CACHE_S = 1.0
_TICK_S = 0.5


class LoopProbe:
    """Ticks on the event loop; its age says whether the loop is responsive."""

    def __init__(self) -> None:
        self.last_tick = time.monotonic()
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.last_tick = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="murmur-loop-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            now = time.monotonic()
            self.lag_s = max(0.0, now - before - _TICK_S)
            self.last_tick = now

    @property
    def age_s(self) -> float:
        return time.monotonic() - self.last_tick


def _snapshot(stats: WorkerStats) -> dict[str, Any]:
    """Copy the counters the loop thread mutates (dict/list copies are atomic in CPython)."""
    for _ in range(5):
        try:
            return {
                "by_status": dict(stats.by_status),
                "rejected": dict(stats.rejected),
                "durations": {
                    agent: (list(h.counts), h.total) for agent, h in list(stats.durations.items())
                },
            }
        except RuntimeError:  # changed size during iteration: try again
            continue
    return {"by_status": {}, "rejected": {}, "durations": {}}


class WorkerCollector(Collector):
    """Exposes a worker's :class:`~murmur.worker.stats.WorkerStats` at scrape time."""

    def __init__(self, worker: Worker, probe: LoopProbe | None = None) -> None:
        self.worker = worker
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        stats = self.worker.stats
        snap = _snapshot(stats)

        tasks = CounterMetricFamily(
            "murmur_tasks",
            "Tasks that produced a result, by agent and status (ok, error).",
            labels=["agent", "status"],
        )
        for (agent, status), n in sorted(snap["by_status"].items()):
            tasks.add_metric([agent, status], n)
        yield tasks

        hist = HistogramMetricFamily(
            "murmur_task_duration_seconds",
            "Time from a task's start on this worker to its result, by agent.",
            labels=["agent"],
        )
        for agent, (counts, total) in sorted(snap["durations"].items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([agent], buckets, total)
        yield hist

        yield GaugeMetricFamily(
            "murmur_in_flight", "Tasks running on this worker now.", value=stats.in_flight
        )
        yield CounterMetricFamily(
            "murmur_redeliveries",
            "Deliveries received with delivery_count > 1: work reclaimed from a dead "
            "worker, or handed back (shutdown, release) and delivered again.",
            value=stats.redeliveries,
        )
        yield CounterMetricFamily(
            "murmur_reclaimed",
            "Same count as murmur_redeliveries (deliveries with delivery_count > 1); the "
            "broker does not say whether a redelivery was a reclaim or a hand-back.",
            value=stats.redeliveries,
        )
        yield CounterMetricFamily(
            "murmur_dead_lettered",
            "Tasks moved to murmur.<agent>.dead by this worker.",
            value=stats.dead_lettered,
        )
        rejected = CounterMetricFamily(
            "murmur_rejected",
            "Tasks rejected without running (bad signature, expired, malformed, ...).",
            labels=["reason"],
        )
        for reason, n in sorted(snap["rejected"].items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(
            "murmur_duplicates",
            "Deliveries answered from the idempotency ledger instead of running again.",
            value=stats.duplicates,
        )
        yield CounterMetricFamily(
            "murmur_presence_failures",
            "Presence record writes that failed: `murmur status` may miss this worker.",
            value=stats.presence_failures,
        )
        yield GaugeMetricFamily(
            "murmur_broker_connected",
            "1 while the worker's last broker operation succeeded.",
            value=1.0 if self.worker.broker_connected else 0.0,
        )
        if self.probe is not None:
            yield GaugeMetricFamily(
                "murmur_event_loop_lag_seconds",
                "How late the event loop ran the last health tick.",
                value=self.probe.lag_s,
            )


class HealthCheck:
    """The answers of ``/health`` and ``/ready``, computed on the HTTP thread."""

    def __init__(self, worker: Worker, loop: asyncio.AbstractEventLoop, probe: LoopProbe) -> None:
        self.worker = worker
        self.loop = loop
        self.probe = probe
        self._lock = threading.Lock()
        self._ping_at = 0.0
        self._ping_ok = False
        self._ping_error = ""

    def _broker_ok(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._ping_at >= PING_CACHE_S:
                ok, error = False, ""
                try:
                    fut = asyncio.run_coroutine_threadsafe(
                        self.worker.broker.ping(PING_TIMEOUT_S), self.loop
                    )
                    ok = bool(fut.result(PING_TIMEOUT_S + 0.5))
                except FutureTimeout:
                    error = "broker ping timed out"
                except Exception as exc:
                    error = f"broker ping failed: {type(exc).__name__}"
                self._ping_ok, self._ping_error = ok, error or ("" if ok else "no answer")
                self._ping_at = time.monotonic()
            return self._ping_ok, self._ping_error

    def health(self) -> tuple[int, dict[str, Any]]:
        age = self.probe.age_s
        body: dict[str, Any] = {"loop_lag_s": round(self.probe.lag_s, 4)}
        if age > STALE_AFTER_S or self.loop.is_closed():
            return 503, {**body, "status": "unhealthy", "reason": f"event loop stalled {age:.1f}s"}
        ok, error = self._broker_ok()
        if not ok:
            reason = f"broker {self.worker.broker.display_url} unreachable ({error})"
            return 503, {**body, "status": "unhealthy", "reason": reason}
        return 200, {**body, "status": "ok"}

    def ready(self) -> tuple[int, dict[str, Any]]:
        if self.worker.running:
            return 200, {"status": "ready", "worker_id": self.worker.worker_id}
        return 503, {"status": "not ready", "reason": "worker is starting or stopping"}


def _handler(registry: CollectorRegistry, check: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/health", "/healthz"):
                self._json(*check.health())
            elif path in ("/ready", "/readyz"):
                self._json(*check.ready())
            else:
                self._json(404, {"error": "not found", "paths": ["/metrics", "/health", "/ready"]})

        def _json(self, code: int, body: dict[str, Any]) -> None:
            self._send(code, json.dumps(body).encode(), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes are not news
            return

    return Handler


class MetricsServer:
    """Serves ``/metrics``, ``/health`` and ``/ready`` for ``worker`` on ``host:port``.

    ``start()`` must run on the worker's event loop (the probe lives there); port 0
    picks a free port, readable from :attr:`port` afterwards.
    """

    def __init__(self, worker: Worker, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104
        self.worker = worker
        self.host = host
        self.port = port
        self.probe = LoopProbe()
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            with contextlib.suppress(ValueError):
                self.registry.register(collector)
        self.registry.register(WorkerCollector(worker, self.probe))
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.probe.start()
        check = HealthCheck(self.worker, loop, self.probe)
        try:
            server = ThreadingHTTPServer((self.host, self.port), _handler(self.registry, check))
        except OSError as exc:
            await self.probe.stop()
            raise ConfigurationError(
                f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from exc
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.25}, daemon=True,
            name="murmur-metrics",
        )  # fmt: skip
        self._thread.start()

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
        await self.probe.stop()
