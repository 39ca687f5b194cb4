"""The statistics and target arithmetic behind the benchmark tables."""

from __future__ import annotations

import pytest

from murmur.bench.stats import percentile, spread
from murmur.bench.suite import Measurement, Settings
from murmur.bench.targets import evaluate


def test_percentile_interpolates_and_refuses_nothing() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile(list(map(float, range(101))), 99) == 99.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_spread_is_median_min_max() -> None:
    s = spread([5.0, 1.0, 3.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 3)
    assert s.relative() == pytest.approx(4 / 3)


def _m(
    system: str, scenario: str, repeat: int, signing: bool = False, **figures: float
) -> Measurement:
    return Measurement(system, "redis", scenario, 1, signing, repeat, figures, [0, 0, 0], [0, 0, 0])


def test_ratios_are_taken_within_each_repeat() -> None:
    records = [
        _m("ceiling", "noop", 0, per_s=10_000, cpu_us_per_task=70),
        _m("murmur", "noop", 0, per_s=6_000, cpu_us_per_task=100),
        # a slower machine in repeat 1 slows both: the ratio stays 0.6
        _m("ceiling", "noop", 1, per_s=5_000, cpu_us_per_task=140),
        _m("murmur", "noop", 1, per_s=3_000, cpu_us_per_task=200),
        _m("murmur", "noop", 0, signing=True, per_s=5_000),
    ]
    verdicts = {v.target.name: v for v in evaluate(records, ["redis"])}
    assert verdicts["throughput"].value is not None
    assert verdicts["throughput"].value.median == pytest.approx(0.6)
    assert verdicts["throughput"].value.max == pytest.approx(0.6)
    assert verdicts["throughput"].status == "PASS"
    assert verdicts["cpu"].status == "PASS"
    assert verdicts["signing"].status == "MISS"  # 5,000 / 6,000 = 83 %
    assert verdicts["p50"].status == "n/a"


def test_settings_reject_unknown_scenarios() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        Settings(scenarios=("noop", "fast"))
