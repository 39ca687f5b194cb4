"""Hand-written ceilings: the least a worker on each broker can do per task.

Each is one small script built the same way on its broker (a batch of up to ``--batch``
tasks per fetch, the handlers run together, then every result published and every task
acknowledged in as few round trips as the client library allows). They speak murmur's
wire format, so murmur's own Client drives them exactly as it drives murmur.
"""

from __future__ import annotations

import sys
from pathlib import Path

from murmur.bench.drivers import Driver, MurmurDriver
from murmur.bench.fleet import WorkerSpec
from murmur.bench.suite import System, WorkerRequest

HERE = Path(__file__).resolve().parent
SCRIPTS = {"redis": "redis_ceiling.py", "nats": "nats_ceiling.py", "kafka": "kafka_ceiling.py"}
LIBRARIES = {"redis": "redis-py", "nats": "nats-py", "kafka": "aiokafka"}


def ceiling_system(broker: str, url: str, batch: int = 50, python: str | None = None) -> System:
    """The hand-written ceiling for ``broker`` as a benchmark system (run by ``python``)."""
    exe = python or sys.executable

    def worker(req: WorkerRequest) -> WorkerSpec:
        argv = [
            exe, str(HERE / SCRIPTS[broker]), "--url", req.url,
            "--agent", req.agent, "--consumer-id", req.consumer_id, "--batch", str(batch),
        ]  # fmt: skip
        keys = req.signing_key.hex() if req.signing_key else ""
        return WorkerSpec(argv, ready="ceiling ready", env={"MURMUR_SIGNING_KEYS": keys})

    def driver(url: str, agent: str, key: bytes | None) -> Driver:
        return MurmurDriver(url, agent, signing_key=key)

    note = f"hand-written {LIBRARIES[broker]}, batch {batch}, result + ack per batch"
    return System("ceiling", broker, url, worker, driver, note=note)
