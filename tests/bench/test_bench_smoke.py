"""Smoke runs of ``murmur bench`` and the repository runner: they complete and write valid
JSON. Nothing here asserts speed (benchmarks measure, tests check behaviour)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


def _run(argv: list[str], timeout: float = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_murmur_bench_completes_and_writes_json(redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = _run(
        [
            sys.executable, "-m", "murmur", "bench", "--broker", redis_url,
            "--scenarios", "noop,latency,io", "--tasks", "200", "--io-tasks", "100",
            "--io-ms", "5", "--latency-tasks", "20", "--json", str(out),
            "--markdown", str(tmp_path / "bench.md"),
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == "murmur-bench/1"
    assert doc["errors"] == []
    got = {(r["system"], r["scenario"]) for r in doc["records"]}
    assert got == {("murmur", "noop"), ("murmur", "latency"), ("murmur", "io")}
    for r in doc["records"]:
        assert len(r["loadavg_before"]) == 3  # the machine's load goes with every figure
    assert "| redis | murmur |" in (tmp_path / "bench.md").read_text()


def test_runner_drives_the_redis_ceiling_and_murmur(redis_url: str, tmp_path: Path) -> None:
    proc = _run(
        [
            sys.executable, "benchmarks/run.py", "--quick", "--brokers", f"redis={redis_url}",
            "--peers", "none", "--scenarios", "noop,latency", "--tasks", "200",
            "--out", str(tmp_path), "--name", "smoke", "--worker-python", "current",
        ]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert doc["worker_python"] == sys.executable
    assert {(r["system"], r["scenario"]) for r in doc["records"]} == {
        ("ceiling", "noop"),
        ("ceiling", "latency"),
        ("murmur", "noop"),
        ("murmur", "latency"),
    }
    # Ratios exist (whatever their value) and every target has a verdict.
    statuses = {t["target"]: t["status"] for t in doc["targets"]}
    assert statuses["throughput"] in ("PASS", "MISS")
    assert statuses["rss"] == "n/a"  # no memory run in this smoke
    assert (tmp_path / "smoke.md").read_text().count("| redis |") >= 2


def test_bench_refuses_memory_and_bad_worker_counts() -> None:
    proc = _run([sys.executable, "-m", "murmur", "bench", "--broker", "memory://x"], 30)
    assert proc.returncode == 2
    assert "memory://" in proc.stderr
    proc = _run(
        [sys.executable, "-m", "murmur", "bench", "-b", "redis://127.0.0.1:1", "-w", "0,a"], 30
    )
    assert proc.returncode == 2
