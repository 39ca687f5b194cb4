"""The fleet as heartbeats describe it: newest ``worker.*`` event per worker id.

A worker is *live* when its newest event is not ``worker.stopped`` and is no older than
three heartbeat periods (its own ``interval_s``) plus a little slack for jitter and
clocks. Reading is incremental, so ``status --watch`` reads only what is new each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from murmur.brokers.base import Broker
from murmur.cli._common import read_pages
from murmur.messages import topics
from murmur.messages.codec import DecodeError, decode_event
from murmur.messages.envelopes import WorkerInfo

WINDOW_MS = 10 * 60 * 1000
MISSED_BEATS = 3
SLACK_S = 2.0


@dataclass(slots=True)
class Beat:
    type: str
    ts_ms: int
    info: WorkerInfo

    def age_s(self, now_ms: int) -> float:
        return max(0.0, (now_ms - self.ts_ms) / 1000)

    def live(self, now_ms: int) -> bool:
        if self.type == "worker.stopped":
            return False
        interval = self.info.interval_s or 30.0
        return self.age_s(now_ms) <= MISSED_BEATS * interval + SLACK_S


class Fleet:
    """Newest heartbeat per worker id seen on ``murmur.heartbeats``."""

    def __init__(self, window_ms: int = WINDOW_MS) -> None:
        self.window_ms = window_ms
        self.beats: dict[str, Beat] = {}
        self._cursor: int | None = None

    async def refresh(self, broker: Broker, now_ms: int) -> None:
        since = now_ms - self.window_ms
        if self._cursor is not None:
            since = max(since, self._cursor)
        async for page in read_pages(broker, topics.HEARTBEATS, since_ms=since):
            for message in page:
                self._add(message.body, message.timestamp_ms)
                self._cursor = max(self._cursor or 0, message.timestamp_ms)
        # Keep the last millisecond re-readable (ties); old workers fall out of the window.
        self.beats = {k: b for k, b in self.beats.items() if now_ms - b.ts_ms <= self.window_ms}

    def _add(self, body: bytes, stored_ms: int) -> None:
        try:
            event = decode_event(body)
            if not event.type.startswith("worker."):
                return
            info = msgspec.convert(event.payload, WorkerInfo)
        except (*DecodeError, TypeError):
            return
        beat = Beat(event.type, event.ts or stored_ms, info)
        current = self.beats.get(info.worker_id)
        if current is None or beat.ts_ms >= current.ts_ms:
            self.beats[info.worker_id] = beat

    def live(self, now_ms: int) -> list[Beat]:
        return sorted(
            (b for b in self.beats.values() if b.live(now_ms)), key=lambda b: b.info.worker_id
        )

    def agents_seen(self) -> set[str]:
        return {a for b in self.beats.values() for a in b.info.agents}


def worker_doc(beat: Beat, now_ms: int) -> dict[str, Any]:
    """One entry of ``status --json``'s ``workers`` (see the status command's help)."""
    info = beat.info
    age = beat.age_s(now_ms)
    return {
        "worker_id": info.worker_id,
        "host": info.host,
        "pid": info.pid,
        "agents": list(info.agents),
        "version": info.version,
        "in_flight": info.in_flight,
        "processed": info.processed,
        "failed": info.failed,
        "concurrency": info.concurrency,
        "prefetch": info.prefetch,
        "started_at": info.started_at,
        "uptime_s": round(info.uptime_s + age, 1),
        "interval_s": info.interval_s,
        "last_beat_at": beat.ts_ms,
        "last_beat_age_s": round(age, 1),
    }
