"""Load benchmarks for murmur itself and anything that speaks its wire format.

``murmur bench`` (and the repository runner ``benchmarks/run.py``) start workers as
separate processes, publish from this one, and measure what a deployment cares about:
no-op throughput, I/O-bound throughput against its ideal, sequential round-trip latency,
worker CPU per task, worker RSS, scale-out and the cost of signing. The pieces are public
so the runner can drive hand-written ceilings and other frameworks through the very same
measurement code:

* :mod:`murmur.bench.fleet`: worker processes, their readiness, CPU and RSS (psutil).
* :mod:`murmur.bench.drivers`: the publisher side (:class:`~murmur.bench.drivers.Driver`).
* :mod:`murmur.bench.suite`: systems, scenarios, repeats and the result records.
* :mod:`murmur.bench.targets`: the targets of the benchmarks issue and their ratios.
* :mod:`murmur.bench.report`: rich tables, markdown and the PNG chart.

psutil is required (``pip install 'murmur[bench]'``); matplotlib only for the chart.
"""

from __future__ import annotations

from murmur.bench.stats import Spread, percentile, spread

__all__ = ["Spread", "percentile", "spread"]
