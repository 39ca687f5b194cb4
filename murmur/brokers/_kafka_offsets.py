"""Per-partition bookkeeping of the Kafka task consumer: contiguous commits, delivery counts.

Kafka acknowledges by committing one offset per partition, which means "everything below
this is done". Under concurrency tasks finish out of order, so :class:`PartitionState`
commits only the highest *contiguous* finished offset + 1: a crash can never lose a task
that was still running below a finished one.

Kafka keeps no delivery counter either. :class:`DeliveryRuns` is the per-partition record
of how often each not-yet-committed offset was handed out, stored in the compacted topic
``murmur.<agent>.deliveries`` (one record per task partition, written before a fetched
batch is handed out). A member that takes over a partition after a crash reads it and
hands the same offsets out with ``delivery_count`` + 1, so a poison task that kills its
workers is dead-lettered after ``max_deliveries`` instead of looping forever.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence

import msgspec

Run = tuple[int, int, int]  # first offset, last offset (inclusive), times handed out


class _RunsRecord(msgspec.Struct, frozen=True):
    p: int
    runs: list[tuple[int, int, int]]
    v: int = 1


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_RunsRecord)


class DeliveryRuns:
    """How many times each uncommitted offset of one partition was handed out, as runs.

    Offsets are handed out in order, so the usual state is one run ``[committed, last, 1]``
    and a record stays a few bytes whatever the batch size. Immutable: :meth:`bumped`
    returns a new value, which the consumer adopts only once it is stored in Kafka.
    """

    __slots__ = ("_firsts", "runs")

    def __init__(self, runs: Sequence[Run] = ()) -> None:
        self.runs: tuple[Run, ...] = tuple(runs)
        self._firsts = [r[0] for r in self.runs]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeliveryRuns) and self.runs == other.runs

    def __hash__(self) -> int:
        return hash(self.runs)

    def __repr__(self) -> str:
        return f"DeliveryRuns({list(self.runs)!r})"

    def count(self, offset: int) -> int:
        """Times ``offset`` was handed out before (0 if never, or committed since)."""
        i = bisect.bisect_right(self._firsts, offset) - 1
        if i >= 0 and offset <= self.runs[i][1]:
            return self.runs[i][2]
        return 0

    def pending(self, start: int, stop: int) -> tuple[int, int]:
        """(offsets handed out in ``[start, stop)``, highest such offset + 1 or ``start``)."""
        n, end = 0, start
        for first, last, _ in self.runs:
            lo, hi = max(first, start), min(last, stop - 1)
            if lo <= hi:
                n += hi - lo + 1
                end = max(end, hi + 1)
        return n, end

    def bumped(self, offsets: Sequence[int], floor: int) -> tuple[DeliveryRuns, list[int]]:
        """Count one more hand-out of ``offsets`` (ascending) and forget runs below ``floor``.

        Returns the new runs and each offset's count *before* this hand-out.
        """
        kept = [(max(f, floor), last, c) for f, last, c in self.runs if last >= floor]
        if not offsets:
            return DeliveryRuns(kept), []
        if not kept or offsets[0] > kept[-1][1]:  # the common case: all new offsets
            priors = [0] * len(offsets)
            return DeliveryRuns(_coalesce(kept + _runs_of(offsets, priors))), priors
        priors = [self.count(o) for o in offsets]
        return DeliveryRuns(
            _coalesce(sorted(_minus(kept, offsets) + _runs_of(offsets, priors)))
        ), priors

    def encode(self, partition: int) -> bytes:
        return _encoder.encode(_RunsRecord(partition, list(self.runs)))

    @classmethod
    def decode(cls, value: bytes | None) -> DeliveryRuns:
        """Parse a stored record; anything unreadable counts as "never handed out"."""
        if not value:
            return cls()
        try:
            record = _decoder.decode(value)
        except msgspec.DecodeError:
            return cls()
        runs = sorted((f, last, c) for f, last, c in record.runs if f <= last and c > 0)
        return cls(_coalesce(runs))


def _runs_of(offsets: Sequence[int], priors: Sequence[int]) -> list[Run]:
    """Runs for freshly handed-out ``offsets`` whose previous counts were ``priors``."""
    out: list[Run] = []
    for o, prior in zip(offsets, priors, strict=True):
        count = prior + 1
        if out and out[-1][1] + 1 == o and out[-1][2] == count:
            out[-1] = (out[-1][0], o, count)
        else:
            out.append((o, o, count))
    return out


def _minus(runs: Sequence[Run], offsets: Sequence[int]) -> list[Run]:
    """``runs`` with the (ascending) ``offsets`` punched out."""
    out: list[Run] = []
    for first, last, count in runs:
        lo = bisect.bisect_left(offsets, first)
        hi = bisect.bisect_right(offsets, last)
        start = first
        for o in offsets[lo:hi]:
            if o > start:
                out.append((start, o - 1, count))
            start = o + 1
        if start <= last:
            out.append((start, last, count))
    return out


def _coalesce(runs: Sequence[Run]) -> list[Run]:
    """Merge adjacent runs with equal counts (input sorted and disjoint)."""
    out: list[Run] = []
    for run in runs:
        if out and out[-1][1] + 1 == run[0] and out[-1][2] == run[2]:
            out[-1] = (out[-1][0], run[1], run[2])
        else:
            out.append(run)
    return out


class PartitionState:
    """What one member knows about one task partition it owns.

    ``handed`` holds, in offset order, every offset handed out and not yet committable
    (outstanding or finished above an outstanding one); ``finished`` the finished ones
    among them. The commit point is the first offset of ``handed`` (or, when it is empty,
    the offset after the last one handed out). ``epoch`` grows on each revocation, so a
    fetch that raced with a rebalance can tell its records went stale.
    """

    __slots__ = ("committed", "epoch", "finished", "handed", "next_fetch", "partition", "runs")

    def __init__(self, partition: int, runs: DeliveryRuns | None = None) -> None:
        self.partition = partition
        self.runs = runs or DeliveryRuns()
        self.handed: deque[int] = deque()
        self.finished: set[int] = set()
        self.next_fetch = -1  # offset after the last one handed out; -1: none yet
        self.committed = -1  # last offset known committed; -1: unknown
        self.epoch = 0

    @property
    def outstanding(self) -> int:
        """Handed out and neither completed nor released."""
        return len(self.handed) - len(self.finished)

    def hand_out(self, offsets: Sequence[int]) -> None:
        if self.committed < 0:  # a fetch starts at the committed offset
            self.committed = offsets[0]
        self.handed.extend(offsets)
        self.next_fetch = offsets[-1] + 1

    def finish(self, offset: int) -> bool:
        """Mark ``offset`` done; True when the commit point moved."""
        handed = self.handed
        if not handed or offset < handed[0]:
            return False  # already committable (a duplicate completion)
        self.finished.add(offset)
        if offset != handed[0]:
            return False
        finished = self.finished
        while handed and handed[0] in finished:
            finished.discard(handed.popleft())
        return True

    def commit_point(self) -> int:
        """The offset to commit now (-1 when nothing was handed out)."""
        return self.handed[0] if self.handed else self.next_fetch

    def needs_commit(self) -> bool:
        return self.commit_point() > self.committed
