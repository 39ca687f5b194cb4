"""The wire format as a hand-written worker would code it: two msgspec structs and hmac.

Deliberately independent of murmur's worker code: only the JSON shapes and the signature
rule of DESIGN §3 are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import time
from typing import Any

import msgspec


class Task(msgspec.Struct):
    task_id: str
    agent: str
    input: float
    reply_to: str | None = None
    request_id: str = ""


class Result(msgspec.Struct):
    task_id: str
    request_id: str
    agent: str
    status: str
    output: Any
    worker_id: str
    finished_at: int
    v: int = 1
    attempt: int = 1


_decode = msgspec.json.Decoder(Task).decode
_encode = msgspec.json.Encoder().encode
TASK_DOMAIN = b"murmur/v1/task\n"
RESULT_DOMAIN = b"murmur/v1/result\n"


def signing_key() -> bytes | None:
    """The first key of ``MURMUR_SIGNING_KEYS`` (bare hex or ``kid:hex``), or None."""
    raw = os.environ.get("MURMUR_SIGNING_KEYS", "").split(",")[0].strip()
    return bytes.fromhex(raw.rpartition(":")[2]) if raw else None


class Handler:
    """Decode, verify, run, encode: the per-task work every ceiling shares."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.key = signing_key()
        self.kid = hashlib.sha256(self.key).hexdigest()[:8] if self.key else ""

    async def run(self, body: bytes, sig: str | None) -> tuple[str | None, bytes, dict[str, str]]:
        """-> (reply_to, result body, result headers)."""
        task = _decode(body)
        if self.key is not None:
            good = hmac.new(self.key, TASK_DOMAIN + body, hashlib.sha256).hexdigest()
            if not sig or not hmac.compare_digest(good, sig):
                raise ValueError("bad signature")  # never happens in a benchmark
        if task.input:
            await asyncio.sleep(task.input / 1000)
        out = _encode(
            Result(
                task.task_id,
                task.request_id,
                task.agent,
                "ok",
                task.input,
                self.worker_id,
                int(time.time() * 1000),
            )
        )
        headers = {"content-type": "application/json"}
        if self.key is not None:
            headers["murmur-sig"] = hmac.new(
                self.key, RESULT_DOMAIN + out, hashlib.sha256
            ).hexdigest()
            headers["murmur-kid"] = self.kid
        return task.reply_to, out, headers


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--agent", required=True)
    p.add_argument("--consumer-id", required=True)
    p.add_argument("--batch", type=int, default=50, help="tasks per fetch (and run at once)")
    return p.parse_args()


READY = "ceiling ready"
