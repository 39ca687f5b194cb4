"""The Kafka worker's in-process ledger table stays small and bounded however many tasks
it finishes."""

from __future__ import annotations

import time
import tracemalloc
import uuid
from types import SimpleNamespace

import pytest

from murmur.brokers._kafka_ledger import LedgerTable, encode_result
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
