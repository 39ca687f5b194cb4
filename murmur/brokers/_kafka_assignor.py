"""A sticky partition assignor that never moves a partition away from a live member's running work.

aiokafka speaks the eager rebalance protocol: on every membership change (a worker joins,
leaves or dies) every member gives up all its partitions and the group leader hands them
out again. With the stock round-robin assignor a partition whose task is still running
often lands on another member, which then runs that uncommitted task a second time -
exactly what DESIGN §1 forbids ("long tasks are never run twice because they are slow").

Each member therefore reports, in its JoinGroup metadata, the partitions it owned and the
ones with tasks still outstanding ("busy"). The leader keeps every busy partition with its
owner, keeps other owned partitions up to a fair quota, and deals the rest to the members
with the fewest, so idle partitions still spread over new members at once. A dead member
reports nothing, so its partitions (and their uncommitted offsets) go to the survivors.
"""

from __future__ import annotations

import heapq
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import msgspec
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)

log = logging.getLogger(__name__)

NAME = "murmur-sticky"
Report = Callable[[], tuple[Collection[int], Collection[int]]]


class _Owned(msgspec.Struct, frozen=True):
    owned: list[int] = []
    busy: list[int] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Owned)


def _decode(user_data: bytes | None) -> _Owned:
    if not user_data:
        return _Owned()
    try:
        return _decoder.decode(user_data)
    except msgspec.DecodeError:
        return _Owned()


class BusyStickyAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """One per consumer; ``report()`` returns (owned, busy) partitions of its task topic."""

    name = NAME
    version = 0

    def __init__(self, report: Report) -> None:
        self._report = report

    def metadata(self, topics: Iterable[str]) -> Any:
        owned, busy = self._report()
        data = _encoder.encode(_Owned(sorted(owned), sorted(busy)))
        return ConsumerProtocolMemberMetadata(self.version, list(topics), data)

    def assign(self, cluster: Any, members: Mapping[str, Any]) -> dict[str, Any]:
        by_topic: dict[str, list[str]] = defaultdict(list)
        for member_id, meta in members.items():
            for topic in meta.subscription:
                by_topic[topic].append(member_id)
        plan: dict[str, list[tuple[str, list[int]]]] = {m: [] for m in members}
        for topic, subscribers in sorted(by_topic.items()):
            partitions = cluster.partitions_for_topic(topic)
            if not partitions:
                log.warning("no partition metadata for topic %s", topic)
                continue
            reports = {m: _decode(members[m].user_data) for m in subscribers}
            for member_id, parts in assign_partitions(sorted(partitions), reports).items():
                plan[member_id].append((topic, sorted(parts)))
        return {
            m: ConsumerProtocolMemberAssignment(self.version, topics, b"")
            for m, topics in plan.items()
        }

    def on_assignment(self, assignment: Any) -> None:
        return None


def assign_partitions(partitions: list[int], reports: Mapping[str, _Owned]) -> dict[str, list[int]]:
    """The plan for one topic: busy stay, owned stay up to quota, the rest go to the fewest."""
    members = sorted(reports)
    if not members:
        return {}
    valid = set(partitions)
    out: dict[str, list[int]] = {m: [] for m in members}
    taken: set[int] = set()
    for m in members:  # 1. busy partitions never move (first claimant wins a conflict)
        for p in reports[m].busy:
            if p in valid and p not in taken:
                out[m].append(p)
                taken.add(p)
    base, extra = divmod(len(partitions), len(members))
    # 2. keep owned partitions up to the quota; the members owning most get the +1 slots
    by_owned = sorted(members, key=lambda m: (-len(reports[m].owned), m))
    for rank, m in enumerate(by_owned):
        quota = base + (1 if rank < extra else 0)
        for p in reports[m].owned:
            if len(out[m]) >= quota:
                break
            if p in valid and p not in taken:
                out[m].append(p)
                taken.add(p)
    # 3. deal the rest to whoever has fewest
    heap = [(len(out[m]), m) for m in members]
    heapq.heapify(heap)
    for p in partitions:
        if p in taken:
            continue
        n, m = heapq.heappop(heap)
        out[m].append(p)
        heapq.heappush(heap, (n + 1, m))
    return out
