"""Worker presence on Kafka (DESIGN §5): the compacted topic ``murmur.presence``.

One record per heartbeat, keyed by worker id, with the header ``murmur-expires-at``
(unix ms, the writer's clock); a graceful stop writes a tombstone. Listing reads the
topic to its end and keeps the newest record per key. Nothing here depends on
compaction having run (Tansu, the test server, never compacts): compaction and the
1-day retention only keep the log short. A :class:`PresenceView` remembers where it
stopped, so a long-lived reader (``murmur status --watch``) reads only what is new.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

from aiokafka.structs import TopicPartition

from murmur.messages import topics

TOPIC: Final = topics.PRESENCE
EXPIRES_HEADER: Final = "murmur-expires-at"
# Short segments let Kafka compact the active beats within the hour; the retention bounds
# the log on servers that never compact.
CONFIGS: Final = {
    "cleanup.policy": "compact,delete",
    "retention.ms": str(86_400_000),
    "segment.ms": str(3_600_000),
}


def expires_at(record: Any) -> int:
    """The expiry a record carries; 0 (expired) for a tombstone or a foreign record."""
    if record.value is None:
        return 0
    for name, value in record.headers or ():
        if name == EXPIRES_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


class PresenceView:
    """Newest record per worker id, built incrementally from the presence topic."""

    def __init__(self) -> None:
        self.positions: dict[TopicPartition, int] = {}
        self._latest: dict[bytes, tuple[bytes, int]] = {}  # key -> (record, expires at)

    def reset(self) -> None:
        self.positions.clear()
        self._latest.clear()

    def starts(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.positions.get(tp, 0) for tp in tps}

    def apply(self, tp: TopicPartition, records: Sequence[Any]) -> None:
        """A :data:`murmur.brokers._kafka_io.Sink`: records in log order."""
        if records and records[0].offset < self.positions.get(tp, 0):
            # Offsets went back: the topic was recreated (a memory-only server restarted).
            self.reset()
        latest = self._latest
        for r in records:
            if r.key is None:
                continue
            expires = expires_at(r)
            if expires:
                latest[r.key] = (r.value, expires)
            else:
                latest.pop(r.key, None)
        if records:
            self.positions[tp] = records[-1].offset + 1

    def live(self, now_ms: int) -> list[bytes]:
        """Unexpired records; expired ones are forgotten (a newer record would replace
        them anyway, and older ones were already read)."""
        self._latest = {k: v for k, v in self._latest.items() if v[1] > now_ms}
        return [record for record, _ in self._latest.values()]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
