"""The Kafka ledger: finished task results in a compacted topic, claims in process memory.

``murmur.<agent>.ledger`` has as many partitions as the task topic; the result of a task
that came from task partition *p* is written to ledger partition *p*. A record holds the
results of all tasks a worker finished in one loop turn (version 2, keyed by its first
task id; version 1 records, one result keyed by its task id, are still read).
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

The table holds where each result is in the topic (partition, offset, expiry: one int,
~220 bytes an entry with its key), not the result: a duplicate is rare, and reading its
record back then costs one fetch, while 10,000 no-op results held ~5 MB per agent.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from murmur.brokers.base import Claim, ClaimState

_VERSION = 1  # one result, keyed by its task id (written before batching; still read)
_BATCH_VERSION = 2  # several results: entries of (id length, result length, expiry)
_HEADER = struct.Struct(">BQ")  # version 1: version, expires at (unix ms)
_ENTRY = struct.Struct(">HIQ")  # version 2, per entry: then the id and the result bytes
ENTRY_HEADER_SIZE = _ENTRY.size
_SWEEP_EVERY_S = 60.0
DEFAULT_MAX_RESULTS = 10_000  # ~2.2 MB of table


def encode_result(result: bytes, expires_at_ms: int) -> bytes:
    """A version 1 record: one result; its key is the task id."""
    return _HEADER.pack(_VERSION, expires_at_ms) + result


def encode_results(entries: Sequence[tuple[bytes, bytes, int]]) -> bytes:
    """A version 2 record: (task id, result, expires at ms) entries."""
    parts = [bytes((_BATCH_VERSION,))]
    for task_id, result, expires_at_ms in entries:
        parts += (_ENTRY.pack(len(task_id), len(result), expires_at_ms), task_id, result)
    return b"".join(parts)


def decode_results(key: bytes | None, value: bytes | None) -> list[tuple[str, bytes, int]]:
    """(task id, result, expires at ms) of each entry of a ledger record; [] for a
    tombstone, a truncated record or an unknown version."""
    if not value:
        return []
    if value[0] == _VERSION:
        if key is None or len(value) < _HEADER.size:
            return []
        return [
            (key.decode("utf-8", "replace"), value[_HEADER.size :], _HEADER.unpack_from(value)[1])
        ]
    if value[0] != _BATCH_VERSION:
        return []
    out = []
    at, end = 1, len(value)
    while at + _ENTRY.size <= end:
        id_len, result_len, expires = _ENTRY.unpack_from(value, at)
        at += _ENTRY.size
        if at + id_len + result_len > end:
            break  # truncated: keep the whole entries before it
        task_id = value[at : at + id_len].decode("utf-8", "replace")
        at += id_len
        out.append((task_id, value[at : at + result_len], expires))
        at += result_len
    return out


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _pack(partition: int, offset: int, expires_at_ms: int) -> int:
    # expiry in whole seconds, rounded up: kept at most a second longer than asked
    return (offset << 54) | (partition << 34) | -(-expires_at_ms // 1000)


def _expires_ms(packed: int) -> int:
    return (packed & 0x3_FFFF_FFFF) * 1000


def _where(packed: int) -> tuple[int, int]:
    return (packed >> 34) & 0xF_FFFF, packed >> 54


class LedgerTable:
    """Where each finished task's result is (wall-clock expiry, shared across processes
    through the topic) and local claims by task id (monotonic lease, this process only)."""

    __slots__ = ("_claims", "_done", "_next_sweep", "max_results", "records_loaded")

    def __init__(self, max_results: int = DEFAULT_MAX_RESULTS) -> None:
        if max_results < 1:
            raise ValueError(f"max_results must be >= 1, got {max_results}")
        self.max_results = max_results
        # the first entries are the oldest, evicted first. An OrderedDict, not a dict:
        # deleting a dict's first key leaves a hole that every later ``next(iter())``
        # scans past, which made eviction cost O(holes) per finished task.
        self._done: OrderedDict[str, int] = OrderedDict()  # id -> _pack(partition, ...)
        self._claims: dict[str, tuple[str, float]] = {}
        self._next_sweep = time.monotonic() + _SWEEP_EVERY_S
        self.records_loaded = 0  # ledger records read from the topic (tests, diagnostics)

    def __len__(self) -> int:
        return len(self._done)

    def remember(self, task_id: str, partition: int, offset: int, expires_at_ms: int) -> None:
        """``task_id``'s result was written at ``offset`` of ledger ``partition``."""
        done = self._done
        done.pop(task_id, None)  # re-inserted as the newest
        done[task_id] = _pack(partition, offset, expires_at_ms)
        self._claims.pop(task_id, None)
        if len(done) > self.max_results:
            done.popitem(last=False)
        self._maybe_sweep()

    def forget(self, task_id: str) -> None:
        """The record is gone (or was not this task's): the task id is unknown again."""
        self._done.pop(task_id, None)

    def load(self, records: Iterable[Any]) -> None:
        """Apply ledger records (aiokafka ``ConsumerRecord``) in log order."""
        now = _wall_ms()
        done = self._done
        for record in records:
            self.records_loaded += 1
            if record.key is None:
                continue
            if record.value is None:  # a tombstone: the task id is unknown again
                done.pop(record.key.decode("utf-8", "replace"), None)
                continue
            for task_id, _, expires in decode_results(record.key, record.value):
                done.pop(task_id, None)
                if expires > now:
                    done[task_id] = _pack(record.partition, record.offset, expires)
        excess = len(done) - self.max_results
        if excess > 0:
            for task_id in list(itertools.islice(done, excess)):
                del done[task_id]

    def location(self, task_id: str) -> tuple[int, int] | None:
        """(partition, offset) of ``task_id``'s unexpired result record, if known."""
        packed = self._done.get(task_id)
        if packed is None:
            return None
        if _expires_ms(packed) <= _wall_ms():
            del self._done[task_id]
            return None
        return _where(packed)

    def claim(self, task_ids: Sequence[str], owner: str, lease_ms: int) -> list[Claim]:
        """CLAIMED, BUSY, or DONE without its result: read it from :meth:`location`."""
        now = time.monotonic()
        out: list[Claim] = []
        for task_id in task_ids:
            if self.location(task_id) is not None:
                out.append(Claim(ClaimState.DONE))
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
        self._done = OrderedDict((k, v) for k, v in self._done.items() if _expires_ms(v) > now)
        self._claims = {k: v for k, v in self._claims.items() if v[1] > mono}
