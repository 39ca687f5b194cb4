"""Long chaos runs with assertions (opt-in: ``python -m pytest -m slow tests/chaos``).

Small versions of benchmarks/chaos.py; the full figures live in docs/reliability.md.
Each run uses real worker subprocesses and a real broker.
"""

from __future__ import annotations

import pytest

from benchmarks import chaos

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.brokers("redis", "nats", "kafka")
async def test_kill_storm_loses_nothing(broker_url: str) -> None:
    figures = await chaos.kill_storm(broker_url, tasks=2000, every=(1.5, 3.0))
    assert figures["kills"] >= 2
    assert figures["lost"] == 0
    assert figures["results"] == figures["submitted"]
    assert figures["duplicates_shown_to_caller"] == 0


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_broker_restart_loses_nothing(kind: str) -> None:
    figures = await chaos.broker_restart(kind, tasks=1000)
    assert figures["lost"] == 0


@pytest.mark.brokers("redis", "nats", "kafka")
async def test_frozen_worker_shows_no_second_result(broker_url: str) -> None:
    figures = await chaos.freeze(broker_url, tasks=20)
    assert figures["results"] == figures["submitted"]
    assert figures["held_by_frozen_worker"] > 0
    assert figures["duplicates_shown_to_caller"] == 0


@pytest.mark.brokers("redis")
async def test_memory_stays_flat(broker_url: str) -> None:
    figures = await chaos.memory(broker_url, tasks=20_000, checkpoints=(5_000,))
    assert figures["at_20000_mb"] - figures["at_5000_mb"] < 10, figures
