"""Micro-benchmark: cost of admitting one 1 KiB task (verify signature + decode).

    python benchmarks/micro_codec.py

Prints µs per operation (best of 5 runs of N iterations) for signature verification,
envelope decoding, input validation, and the whole admission step the worker runs.
"""

from __future__ import annotations

import json
import platform
import sys
import timeit

import msgspec

from murmur.brokers.base import Delivery
from murmur.messages import TaskMessage
from murmur.messages.codec import decode_task, encode
from murmur.signing import Keyring
from murmur.worker.admission import Limits, admit


class Doc(msgspec.Struct):
    text: str
    tags: list[str]
    score: float


def main(n: int = 20_000) -> dict[str, float]:
    ring = Keyring(b"k" * 32)
    input_ = {"text": "x" * 740, "tags": ["a", "b", "c"], "score": 0.5}
    body = encode(
        TaskMessage(
            task_id="3f2a9c1e-0001-4a4b-9c1e-000000000001",
            agent="summarize",
            input=input_,
            reply_to="murmur.results.client-42",
            request_id="req-7",
            created_at=1767225600000,
            expires_at=1767226200000,
        )
    )
    body = body + b" " * max(0, 1024 - len(body))  # pad to exactly 1 KiB
    headers = {"content-type": "application/json", **ring.headers(body)}
    delivery = Delivery(body, headers, 1, "1-0")
    decoder = msgspec.json.Decoder(Doc)
    raw_input = decode_task(body).input
    limits = Limits()
    cases = {
        "verify (HMAC-SHA256, 1 KiB)": lambda: ring.verify(
            body, headers["murmur-sig"], headers["murmur-kid"]
        ),
        "decode envelope (input left raw)": lambda: decode_task(body),
        "validate input into a Struct": lambda: decoder.decode(raw_input),
        "admit = size + headers + verify + decode + checks": lambda: admit(
            delivery, "summarize", {"summarize"}, ring, limits
        ),
    }
    out: dict[str, float] = {}
    print(
        f"python {platform.python_version()} on {platform.machine()}, body {len(body)} bytes, n={n}"
    )
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        out[name] = round(best, 2)
        print(f"  {best:7.2f} µs  {name}")
    return out


if __name__ == "__main__":
    results = main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
    print(json.dumps(results))
