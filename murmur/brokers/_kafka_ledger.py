"""The Kafka ledger: finished task results in a compacted topic, claims in process memory.

``murmur.<agent>.ledger`` has as many partitions as the task topic; the result of a task
that came from task partition *p* is written to ledger partition *p*, keyed by task id.
Only the member owning task partition *p* receives the tasks of *p* (every copy of a task
id lands in the same partition because tasks are keyed by task id), so when a member is
assigned *p* it loads ledger partition *p* and can answer any replay of those tasks.

Claims (a task running right now) need no storage: across processes partition ownership
already makes a task id exclusive, and inside one process the shared :class:`LedgerTable`
gives single flight between local consumers. The topic is ``compact,delete`` with a
retention, so it stays bounded.

Unlike Redis and NATS, whose ledgers live on the server, this one lives in the worker, so
it keeps only the newest ``max_results`` results per agent (and none past their ttl): a
worker that finished a million tasks in the hour must not hold a million results. That
covers what comes back in practice (tasks redelivered after a crash or a rebalance are
the last ones finished before their offsets were committed; duplicate submissions
arrive close together). An older duplicate is run again: at-least-once, as documented.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from murmur.brokers.base import Claim, ClaimState

_VERSION = 1
_HEADER = struct.Struct(">BQ")  # version, expires at (unix ms)
_SWEEP_EVERY_S = 60.0
DEFAULT_MAX_RESULTS = 10_000  # ~5 MB of no-op results


def encode_result(result: bytes, expires_at_ms: int) -> bytes:
    return _HEADER.pack(_VERSION, expires_at_ms) + result


def decode_result(value: bytes | None) -> tuple[bytes, int] | None:
    """(result, expires_at_ms) of a stored record, or None for a tombstone/unknown version."""
    if value is None or len(value) < _HEADER.size:
        return None
    version, expires = _HEADER.unpack_from(value)
    if version != _VERSION:
        return None
    return value[_HEADER.size :], expires


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class LedgerTable:
    """Results by task id (wall-clock expiry, shared across processes through the topic)
    and local claims by task id (monotonic lease, this process only)."""

    __slots__ = ("_claims", "_done", "_next_sweep", "max_results", "records_loaded")

    def __init__(self, max_results: int = DEFAULT_MAX_RESULTS) -> None:
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        self.max_results = max_results
        # insertion-ordered: the first entries are the oldest, evicted first
        self._done: dict[str, tuple[bytes, int]] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        self.records_loaded = 0  # ledger records read from the topic (tests, diagnostics)

    def __len__(self) -> int:
        return len(self._done)

    def remember(self, task_id: str, result: bytes, expires_at_ms: int) -> None:
        done = self._done
        done.pop(task_id, None)  # re-inserted as the newest
        done[task_id] = (result, expires_at_ms)
        self._claims.pop(task_id, None)
        if len(done) > self.max_results:
            del done[next(iter(done))]
        self._maybe_sweep()

    def load(self, records: Iterable[Any]) -> None:
        """Apply ledger records (aiokafka ``ConsumerRecord``) in log order."""
        now = _wall_ms()
        done = self._done
        for record in records:
            self.records_loaded += 1
            if record.key is None:
                continue
            task_id = record.key.decode("utf-8", "replace")
            entry = decode_result(record.value)
            done.pop(task_id, None)
            if entry is not None and entry[1] > now:
                done[task_id] = entry
        excess = len(done) - self.max_results
        if excess > 0:
            for task_id in list(itertools.islice(done, excess)):
                del done[task_id]

    def result(self, task_id: str) -> bytes | None:
        entry = self._done.get(task_id)
        if entry is None:
            return None
        if entry[1] <= _wall_ms():
            del self._done[task_id]
            return None
        return entry[0]

    def claim(self, task_ids: Sequence[str], owner: str, lease_ms: int) -> list[Claim]:
        now = time.monotonic()
        out: list[Claim] = []
        for task_id in task_ids:
            result = self.result(task_id)
            if result is not None:
                out.append(Claim(ClaimState.DONE, result=result))
                continue
            held = self._claims.get(task_id)
            if held is not None and held[0] != owner and held[1] > now:
                out.append(Claim(ClaimState.BUSY, owner=held[0]))
                continue
            self._claims[task_id] = (owner, now + lease_ms / 1000)
            out.append(Claim(ClaimState.CLAIMED))
        return out

    def extend(self, task_ids: Sequence[str], owner: str, lease_ms: int) -> None:
        until = time.monotonic() + lease_ms / 1000
        for task_id in task_ids:
            held = self._claims.get(task_id)
            if held is not None and held[0] == owner:
                self._claims[task_id] = (owner, until)

    def release(self, task_ids: Sequence[str], owner: str) -> None:
        for task_id in task_ids:
            held = self._claims.get(task_id)
            if held is not None and held[0] == owner:
                del self._claims[task_id]

    def _maybe_sweep(self) -> None:
        mono = time.monotonic()
        if mono < self._next_sweep:
            return
        self._next_sweep = mono + _SWEEP_EVERY_S
        now = _wall_ms()
        self._done = {k: v for k, v in self._done.items() if v[1] > now}
        self._claims = {k: v for k, v in self._claims.items() if v[1] > mono}
