"""Counters a worker keeps for heartbeats, ``murmur status`` and Prometheus.

Plain integers updated on the hot path; the metrics exporter reads them on scrape, so
serving metrics costs nothing per task.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

# Seconds; covers no-op tasks to multi-minute agent runs.
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.n += 1


@dataclass(slots=True)
class WorkerStats:
    started_monotonic: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    processed: int = 0  # tasks that produced a result (ok or error), republished ones excluded
    failed: int = 0  # of those, status "error"
    duplicates: int = 0  # answered from the ledger instead of running again
    redeliveries: int = 0  # deliveries with delivery_count > 1
    stale_claims: int = 0  # claims lost during a stall, re-checked and not run again
    dead_lettered: int = 0
    presence_failures: int = 0  # presence writes/drops the broker refused (DESIGN §5)
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    by_status: Counter[tuple[str, str]] = field(default_factory=Counter)  # (agent, status)
    durations: dict[str, Histogram] = field(default_factory=dict)

    def finished(self, agent: str, status: str, seconds: float) -> None:
        self.processed += 1
        if status != "ok":
            self.failed += 1
        self.by_status[(agent, status)] += 1
        hist = self.durations.get(agent)
        if hist is None:
            hist = self.durations[agent] = Histogram()
        hist.observe(seconds)

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_monotonic
