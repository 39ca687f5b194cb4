"""The Kafka worker's in-process ledger table stays small and bounded however many tasks
it finishes."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import uuid
from types import SimpleNamespace

import pytest

from murmur.brokers._kafka_ledger import (
    LedgerTable,
    decode_results,
    encode_result,
    encode_results,
)
from murmur.brokers._kafka_writer import MAX_RECORD_BYTES, _Completion, _ledger_chunks
from murmur.brokers.base import ClaimState
from murmur.errors import ConfigurationError


def _later_ms() -> int:
    return time.time_ns() // 1_000_000 + 3_600_000


def test_keeps_only_the_newest_results() -> None:
    table = LedgerTable(max_results=1_000)
    for i in range(20_000):
        table.remember(f"t{i}", 3, 100 + i, _later_ms())
    assert len(table) == 1_000
    assert table.location("t19999") == (3, 20_099)
    assert table.location("t19000") == (3, 19_100)
    assert table.location("t18999") is None  # evicted: it would be run again, not answered
    (claim,) = table.claim(["t19500"], "me", 10_000)
    assert claim.state is ClaimState.DONE  # the consumer reads its result back


def test_remembering_again_makes_an_entry_newest() -> None:
    table = LedgerTable(max_results=2)
    table.remember("a", 0, 1, _later_ms())
    table.remember("b", 0, 2, _later_ms())
    table.remember("a", 0, 3, _later_ms())
    table.remember("c", 0, 4, _later_ms())
    assert table.location("a") == (0, 3)
    assert table.location("b") is None
    assert table.location("c") == (0, 4)


def test_an_entry_costs_its_key_and_one_int_whatever_the_result_size() -> None:
    """A location, not the result: 10,000 no-op results held 5.2 MB as bytes."""
    table = LedgerTable(max_results=10_000)
    tracemalloc.start()
    try:
        for i in range(20_000):
            table.remember(uuid.uuid4().hex, 11, 2**40 + i, _later_ms())
        size = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert size < 2.5 * 2**20, f"{size / 2**20:.1f} MB for 10,000 entries"


def test_locations_round_trip_large_offsets_and_partitions() -> None:
    table = LedgerTable()
    table.remember("t", 999_999, 2**62 + 7, _later_ms())
    assert table.location("t") == (999_999, 2**62 + 7)


def test_expired_entries_are_not_done() -> None:
    table = LedgerTable()
    table.remember("t", 0, 5, time.time_ns() // 1_000_000 - 2_000)
    assert table.location("t") is None
    (claim,) = table.claim(["t"], "me", 10_000)
    assert claim.state is ClaimState.CLAIMED


def test_loading_a_partition_keeps_its_newest_records() -> None:
    table = LedgerTable(max_results=100)
    expires = _later_ms()
    records = [
        SimpleNamespace(
            key=f"t{i}".encode(), value=encode_result(b"x", expires), partition=2, offset=i
        )
        for i in range(5_000)
    ]
    table.load(records)
    assert len(table) == 100
    assert table.location("t4999") == (2, 4999)
    assert table.location("t4899") is None


def test_tombstones_and_expired_records_are_dropped_on_load() -> None:
    table = LedgerTable(max_results=10)
    table.remember("gone", 0, 0, _later_ms())
    table.load(
        [
            SimpleNamespace(key=b"gone", value=None, partition=0, offset=1),
            SimpleNamespace(key=b"old", value=encode_result(b"x", 1), partition=0, offset=2),
        ]
    )
    assert table.location("gone") is None and table.location("old") is None
    assert len(table) == 0


def test_the_bound_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    from murmur.brokers.kafka import KafkaBroker

    assert KafkaBroker().ledger_table("a").max_results == 10_000
    monkeypatch.setenv("MURMUR_KAFKA_LEDGER_RESULTS", "50")
    assert KafkaBroker().ledger_table("a").max_results == 50
    assert KafkaBroker(ledger_results=7).ledger_table("a").max_results == 7
    with pytest.raises(ConfigurationError, match="ledger_results"):
        KafkaBroker(ledger_results=0)
    monkeypatch.setenv("MURMUR_KAFKA_LEDGER_RESULTS", "many")
    with pytest.raises(ConfigurationError, match="MURMUR_KAFKA_LEDGER_RESULTS"):
        KafkaBroker()


def test_a_batch_record_round_trips_its_entries() -> None:
    entries = [(b"t1", b'{"a": 1}', 5), ("tâche".encode(), b"", 2**40), (b"t3", b"x" * 70_000, 7)]
    decoded = decode_results(b"t1", encode_results(entries))
    assert decoded == [(tid.decode(), result, expires) for tid, result, expires in entries]


def test_version_1_records_are_still_read() -> None:
    assert decode_results(b"t", encode_result(b"r", 9)) == [("t", b"r", 9)]
    assert decode_results(None, encode_result(b"r", 9)) == []


def test_damaged_or_unknown_records_yield_only_whole_entries() -> None:
    value = encode_results([(b"a", b"1", 5), (b"b", b"2", 6)])
    assert decode_results(b"a", value[:-1]) == [("a", b"1", 5)]
    assert decode_results(b"a", b"\x07" + value[1:]) == []
    assert decode_results(b"a", None) == decode_results(b"a", b"") == []


def test_loading_a_batch_record_remembers_every_entry() -> None:
    table = LedgerTable(max_results=10)
    expires = _later_ms()
    value = encode_results([(b"a", b"1", expires), (b"b", b"2", 1), (b"c", b"3", expires)])
    table.load([SimpleNamespace(key=b"a", value=value, partition=4, offset=9)])
    assert table.location("a") == table.location("c") == (4, 9)
    assert table.location("b") is None  # expired


def test_ledger_records_are_split_by_partition_and_size() -> None:
    loop = asyncio.new_event_loop()
    try:
        big = b"x" * (MAX_RECORD_BYTES // 3)
        batch = [
            _Completion(p, (b"t%d" % i, big if p == 2 else b"r", 1), (), loop.create_future())
            for i, p in enumerate([0, 0, 1, 2, 2, 2])
        ]
        batch.insert(2, _Completion(0, None, (), loop.create_future()))  # no ledger entry
        chunks = _ledger_chunks(batch)
    finally:
        loop.close()
    assert [[c.entry[0] for c in chunk if c.entry] for chunk in chunks] == [
        [b"t0", b"t1"],
        [b"t2"],
        [b"t3", b"t4"],  # a third would pass MAX_RECORD_BYTES
        [b"t5"],
    ]
