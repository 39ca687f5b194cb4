"""The fleet as ``murmur status`` (and the demo) sees it.

Live workers are the broker's presence records (DESIGN §5): each worker rewrites its
record every heartbeat, the record lapses 3 periods + 2 s after the last beat and is
dropped on a graceful stop, so listing them is one bounded call and needs no clock
arithmetic here. The heartbeat history is read only for agent *names*: an agent whose
workers all died keeps showing (queue and zero workers, in red) for 10 minutes. That
read is incremental, so ``status --watch`` reads only what is new.
"""

from __future__ import annotations

from typing import Any

import msgspec

from murmur.brokers.base import Broker
from murmur.cli._common import read_pages
from murmur.messages import topics
from murmur.messages.codec import DecodeError, decode_event
from murmur.messages.envelopes import Presence

WINDOW_MS = 10 * 60 * 1000
_decode_presence = msgspec.json.Decoder(Presence).decode


async def live_workers(broker: Broker) -> list[Presence]:
    """Every worker with an unexpired presence record, sorted by worker id.

    Records that do not decode (another version's, a stranger's) are skipped.
    """
    newest: dict[str, Presence] = {}
    for raw in await broker.list_presence():
        try:
            p = _decode_presence(raw)
        except msgspec.DecodeError:  # includes ValidationError
            continue
        current = newest.get(p.worker_id)
        if current is None or p.beat_at >= current.beat_at:
            newest[p.worker_id] = p
    return sorted(newest.values(), key=lambda p: p.worker_id)


class RecentAgents:
    """Agent names mentioned by ``worker.*`` events on ``murmur.heartbeats`` lately."""

    def __init__(self, window_ms: int = WINDOW_MS) -> None:
        self.window_ms = window_ms
        self.seen: dict[str, int] = {}  # agent -> newest event time (unix ms)
        self._cursor: int | None = None

    async def refresh(self, broker: Broker, now_ms: int) -> set[str]:
        """Read what is new since the last call; returns the agents seen in the window."""
        since = now_ms - self.window_ms
        if self._cursor is not None:
            since = max(since, self._cursor)  # the last millisecond is re-read (ties)
        async for page in read_pages(broker, topics.HEARTBEATS, since_ms=since):
            for message in page:
                self._add(message.body, message.timestamp_ms)
                self._cursor = max(self._cursor or 0, message.timestamp_ms)
        self.seen = {a: ts for a, ts in self.seen.items() if now_ms - ts <= self.window_ms}
        return set(self.seen)

    def _add(self, body: bytes, stored_ms: int) -> None:
        try:
            event = decode_event(body)
            if not event.type.startswith("worker.") or not isinstance(event.payload, dict):
                return
            agents = event.payload.get("agents")
        except (*DecodeError, TypeError):
            return
        if not isinstance(agents, list):
            return
        ts = event.ts or stored_ms
        for agent in agents:
            if isinstance(agent, str) and ts >= self.seen.get(agent, 0):
                self.seen[agent] = ts


def worker_doc(p: Presence, now_ms: int) -> dict[str, Any]:
    """One entry of ``status --json``'s ``workers`` (see the status command's help)."""
    age = max(0.0, (now_ms - p.beat_at) / 1000)
    return {
        "worker_id": p.worker_id,
        "host": p.host,
        "pid": p.pid,
        "agents": list(p.agents),
        "version": p.version,
        "in_flight": p.in_flight,
        "processed": p.processed,
        "failed": p.failed,
        "concurrency": p.concurrency,
        "prefetch": p.prefetch,
        "started_at": p.started_at,
        "uptime_s": round(p.uptime_s + age, 1),
        "interval_s": p.interval_s,
        "last_beat_at": p.beat_at,
        "last_beat_age_s": round(age, 1),
        "expires_at": p.expires_at,
    }
