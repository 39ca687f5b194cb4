"""The targets of the benchmarks issue, checked against measurements.

Ratios against the hand-written ceiling are taken *within each repeat* (murmur and the
ceiling measured minutes apart under the same machine load), then summarised as the
median and range over repeats. Targets that need a ceiling are reported as ``n/a`` when
none was measured (``murmur bench`` alone measures murmur only).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from murmur.bench.stats import Spread, spread
from murmur.bench.suite import Measurement, figure

RSS_LIMIT_MB = 60.0
RSS_FLAT_MB = 5.0  # "flat between 10k and 100k": growth within this


@dataclass(frozen=True, slots=True)
class Target:
    """One line of the issue: a figure, how it is formed, the bound it must meet."""

    name: str
    text: str
    bound: float
    better: str  # ">=" or "<="
    unit: str  # "x", "%", "MB"
    compute: Callable[[Sequence[Measurement], str], dict[int, float]]

    def passes(self, value: float) -> bool:
        op = operator.ge if self.better == ">=" else operator.le
        return bool(op(value, self.bound))


def _ratio(
    records: Sequence[Measurement],
    broker: str,
    scenario: str,
    name: str,
    other: tuple[str, str, str, bool] | None = None,
) -> dict[int, float]:
    """murmur's ``name`` / the ceiling's (or ``other``: system, scenario, name, signing),
    per repeat."""
    mine = figure(records, "murmur", broker, scenario, name)
    if other is None:
        base = figure(records, "ceiling", broker, scenario, name)
    else:
        system, o_scenario, o_name, signing = other
        base = figure(records, system, broker, o_scenario, o_name, signing=signing)
    return {r: mine[r] / base[r] for r in mine if base.get(r)}


def _signing(records: Sequence[Measurement], broker: str) -> dict[int, float]:
    signed = figure(records, "murmur", broker, "noop", "per_s", signing=True)
    plain = figure(records, "murmur", broker, "noop", "per_s")
    return {r: signed[r] / plain[r] for r in signed if plain.get(r)}


TARGETS: tuple[Target, ...] = (
    Target(
        "throughput",
        "no-op throughput >= 0.5x the ceiling",
        0.5,
        ">=",
        "x",
        lambda rs, b: _ratio(rs, b, "noop", "per_s"),
    ),
    Target(
        "p50",
        "p50 round trip <= 1.5x the ceiling's",
        1.5,
        "<=",
        "x",
        lambda rs, b: _ratio(rs, b, "latency", "p50_ms"),
    ),
    Target(
        "p99",
        "p99 round trip <= 2x the ceiling's",
        2.0,
        "<=",
        "x",
        lambda rs, b: _ratio(rs, b, "latency", "p99_ms"),
    ),
    Target(
        "io",
        "20 ms I/O tasks, concurrency 50 >= 90% of ideal",
        90.0,
        ">=",
        "%",
        lambda rs, b: {r: v * 100 for r, v in figure(rs, "murmur", b, "io", "of_ideal").items()},
    ),
    Target(
        "cpu",
        "worker CPU per no-op task <= 2x the ceiling's",
        2.0,
        "<=",
        "x",
        lambda rs, b: _ratio(rs, b, "noop", "cpu_us_per_task"),
    ),
    Target(
        "rss",
        f"worker RSS <= {RSS_LIMIT_MB:g} MB after the memory run",
        RSS_LIMIT_MB,
        "<=",
        "MB",
        lambda rs, b: figure(rs, "murmur", b, "memory", "rss_mb"),
    ),
    Target(
        "rss_flat",
        f"RSS flat from 10% to 100% of the memory run (growth <= {RSS_FLAT_MB:g} MB)",
        RSS_FLAT_MB,
        "<=",
        "MB",
        lambda rs, b: figure(rs, "murmur", b, "memory", "rss_growth_mb"),
    ),
    Target(
        "signing",
        "signing on keeps >= 90% of no-op throughput",
        90.0,
        ">=",
        "%",
        lambda rs, b: {r: v * 100 for r, v in _signing(rs, b).items()},
    ),
)


@dataclass(frozen=True, slots=True)
class Verdict:
    target: Target
    broker: str
    value: Spread | None  # None: not measured in this run

    @property
    def status(self) -> str:
        """PASS when the median meets the bound, MISS when not, n/a when not measured."""
        if self.value is None:
            return "n/a"
        return "PASS" if self.target.passes(self.value.median) else "MISS"

    def describe(self) -> str:
        if self.value is None:
            return "-"
        v, unit = self.value, self.target.unit
        fmt = "{:.2f}" if unit == "x" else "{:.1f}"
        text = fmt.format(v.median) + ("x" if unit == "x" else f" {unit}".replace(" %", "%"))
        if v.n > 1:
            text += f" [{fmt.format(v.min)}-{fmt.format(v.max)}]"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target.name,
            "text": self.target.text,
            "broker": self.broker,
            "bound": self.target.bound,
            "better": self.target.better,
            "unit": self.target.unit,
            "status": self.status,
            "value": self.value.as_dict() if self.value else None,
        }


def evaluate(records: Sequence[Measurement], brokers: Sequence[str]) -> list[Verdict]:
    """Every target for every broker measured (``n/a`` where a figure is missing)."""
    out = []
    for broker in brokers:
        for t in TARGETS:
            values = t.compute(records, broker)
            out.append(Verdict(t, broker, spread(values.values()) if values else None))
    return out
