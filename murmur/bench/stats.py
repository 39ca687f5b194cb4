"""Small statistics: percentiles of latencies and the median/min/max of repeated runs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks.

    ``values`` need not be sorted. An empty input is a caller bug (nothing was measured),
    so it raises instead of inventing a number.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Spread:
    """The median of repeated runs with their range: one figure plus its run-to-run spread."""

    median: float
    min: float
    max: float
    n: int

    def relative(self) -> float:
        """(max - min) / median: how much the repeats disagree (0 for one run)."""
        return (self.max - self.min) / self.median if self.median else 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def spread(values: Iterable[float]) -> Spread:
    """Median, min and max of ``values`` (repeats of one measurement)."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        raise ValueError("spread of no values")
    return Spread(percentile(data, 50), data[0], data[-1], len(data))
