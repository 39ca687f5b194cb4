"""``--metrics-port``: Prometheus counters move under load; /health follows the broker."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

from murmur import Client
from tests.cli._support import cli_env, free_port, start_worker, wait_until
from tests.support.servers import OwnedServer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def load(url: str, unique: str, n: int) -> None:
    async with Client(url) as client:
        ok = await client.gather(f"{unique}-echo", list(range(n)), timeout=20)
        bad = await client.gather(f"{unique}-fail", [None] * 3, timeout=20)
    assert all(r.ok for r in ok) and not any(r.ok for r in bad)


def test_metrics_and_health(owned_redis: OwnedServer, unique: str, tmp_path: Path) -> None:
    url, port = owned_redis.url, free_port()
    env = cli_env(url, unique)
    worker = start_worker(env, tmp_path / "w.log", "--metrics-port", str(port))
    try:
        status, text = get(port, "/metrics")
        assert status == 200
        assert sample(text, "murmur_tasks_total", agent=f"{unique}-echo", status="ok") == 0
        for name in ("murmur_in_flight", "murmur_redeliveries_total", "murmur_reclaimed_total",
                     "murmur_dead_lettered_total", "murmur_duplicates_total"):  # fmt: skip
            assert re.search(rf"^{name} ", text, re.MULTILINE), name
        assert "# TYPE murmur_rejected_total counter" in text
        assert "# TYPE murmur_task_duration_seconds histogram" in text

        asyncio.run(load(url, unique, 40))
        _, text = get(port, "/metrics")
        assert sample(text, "murmur_tasks_total", agent=f"{unique}-echo", status="ok") == 40
        assert sample(text, "murmur_tasks_total", agent=f"{unique}-fail", status="error") == 3
        count = sample(text, "murmur_task_duration_seconds_count", agent=f"{unique}-echo")
        inf = sample(text, "murmur_task_duration_seconds_bucket", agent=f"{unique}-echo", le="+Inf")
        assert count == inf == 40

        assert get(port, "/ready")[0] == 200
        code, body = get(port, "/health")
        assert (code, json.loads(body)["status"]) == (200, "ok")

        owned_redis.stop()
        code, body = wait_until(
            lambda: (r := get(port, "/health"))[0] == 503 and r, 10, "/health to fail"
        )
        assert "unreachable" in json.loads(body)["reason"]
        owned_redis.start()
        wait_until(lambda: get(port, "/health")[0] == 200, 15, "/health to recover")
    finally:
        assert worker.stop() == 0, worker.tail()
