"""The Kafka worker's in-process ledger table stays bounded however many tasks it finishes."""

from __future__ import annotations

import time
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
        table.remember(f"t{i}", b"r%d" % i, _later_ms())
    assert len(table) == 1_000
    assert table.result("t19999") == b"r19999"
    assert table.result("t19000") == b"r19000"
    assert table.result("t18999") is None  # evicted: it would be run again, not answered
    (claim,) = table.claim(["t19500"], "me", 10_000)
    assert claim.state is ClaimState.DONE and claim.result == b"r19500"


def test_remembering_again_makes_an_entry_newest() -> None:
    table = LedgerTable(max_results=2)
    table.remember("a", b"1", _later_ms())
    table.remember("b", b"2", _later_ms())
    table.remember("a", b"3", _later_ms())
    table.remember("c", b"4", _later_ms())
    assert table.result("a") == b"3"
    assert table.result("b") is None
    assert table.result("c") == b"4"


def test_loading_a_partition_keeps_its_newest_records() -> None:
    table = LedgerTable(max_results=100)
    expires = _later_ms()
    records = [
        SimpleNamespace(key=f"t{i}".encode(), value=encode_result(b"x", expires))
        for i in range(5_000)
    ]
    table.load(records)
    assert len(table) == 100
    assert table.result("t4999") == b"x"
    assert table.result("t4899") is None


def test_tombstones_and_expired_records_are_dropped_on_load() -> None:
    table = LedgerTable(max_results=10)
    table.remember("gone", b"x", _later_ms())
    table.load(
        [
            SimpleNamespace(key=b"gone", value=None),
            SimpleNamespace(key=b"old", value=encode_result(b"x", 1)),
        ]
    )
    assert table.result("gone") is None and table.result("old") is None
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
