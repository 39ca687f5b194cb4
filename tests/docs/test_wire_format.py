"""docs/wire-format.md: its snippets compute the test vectors, its commands work.

* every ``test: vector`` block (Python, Node.js, shell) prints the vector's signature
  and key id;
* the page quotes tests/vectors/wire_v1.json exactly;
* the ``test: redis`` block (redis-cli + openssl) and the ``test: nats`` block (nats-py)
  publish a signed task to a real worker and get a result whose signature verifies.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest

from murmur import Keyring
from murmur.signing import RESULT_DOMAIN
from tests.docs._markdown import DOCS, ROOT, Block, blocks
from tests.docs._worker import KEY, KEY_HEX, base_env, run, running_worker

PAGE = DOCS / "wire-format.md"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "wire_v1.json").read_text())
DOC_AGENT = "summarize"


def _marked(word: str) -> list[Block]:
    found = [b for b in blocks(PAGE) if b.directive == word]
    assert found, f"no 'test: {word}' block in {PAGE.name}"
    return found


def _argv(block: Block) -> list[str]:
    if block.lang == "python":
        return [sys.executable, "-c", block.code]
    if block.lang == "javascript":
        return ["node", "--input-type=module", "-e", block.code]
    assert block.lang == "bash", block.lang
    return ["bash", "-euo", "pipefail", "-c", block.code]


def _tools(block: Block) -> list[str]:
    return {"javascript": ["node"], "bash": ["openssl", "xxd"]}.get(block.lang, [])


@pytest.mark.parametrize("lang", ["python", "javascript", "bash"])
async def test_signature_snippets_compute_the_vector(lang: str) -> None:
    (block,) = [b for b in _marked("vector") if b.lang == lang]
    missing = [t for t in _tools(block) if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    done = await run(_argv(block), base_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [VECTORS["task"]["signature"], VECTORS["kid"]]


def test_page_quotes_the_vectors_file() -> None:
    text = PAGE.read_text()
    for value in (
        VECTORS["key_hex"],
        VECTORS["kid"],
        VECTORS["task"]["signature"],
        VECTORS["result"]["signature"],
        VECTORS["result"]["body"],
        VECTORS["task"]["body"],
    ):
        assert value in text, value
    assert bytes.fromhex(VECTORS["key_hex"]).decode() in text
    # The documented algorithm is the one murmur runs.
    ring = Keyring(bytes.fromhex(VECTORS["key_hex"]))
    assert ring.sign(VECTORS["task"]["body"].encode()) == (
        VECTORS["task"]["signature"],
        VECTORS["kid"],
    )


def _adapt(code: str, agent: str) -> str:
    return re.sub(rf"\b{DOC_AGENT}\b", agent, code)


def _verify_redis_cli_reply(stdout: str) -> dict[str, object]:
    lines = stdout.splitlines()
    assert len(lines) >= 4, stdout
    fields = dict(zip(lines[2::2], lines[3::2], strict=False))
    body = fields["body"].encode()
    verdict = Keyring(KEY).verify(body, fields["murmur-sig"], fields["murmur-kid"], RESULT_DOMAIN)
    assert verdict.ok, verdict
    result: dict[str, object] = json.loads(body)
    return result


async def test_redis_cli_commands_round_trip(redis_url: str, unique: str) -> None:
    (block,) = _marked("redis")
    missing = [t for t in ("redis-cli", "openssl", "xxd") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    agent = f"{DOC_AGENT}_{unique}"
    code = _adapt(block.code, agent).replace("redis-cli ", f"redis-cli -u {redis_url} ")
    async with running_worker(redis_url, agent):
        done = await run(_argv(Block("bash", "bash", code, 0, None)), base_env(KEY_HEX=KEY_HEX))
    assert done.returncode == 0, done.stderr
    # Output: the XADD entry id, then the XREAD reply.
    reply = done.stdout.split("\n", 1)[1]
    result = _verify_redis_cli_reply(reply)
    assert result["status"] == "ok", result
    assert result["output"] == {"echo": {"text": "Hello from a shell"}, "agent": agent}


async def test_nats_py_snippet_round_trip(nats_url: str, unique: str) -> None:
    (block,) = _marked("nats")
    agent = f"{DOC_AGENT}_{unique}"
    code = _adapt(block.code, agent).replace("nats://localhost:4222", nats_url)
    async with running_worker(nats_url, agent):
        done = await run([sys.executable, "-c", code], base_env(KEY_HEX=KEY_HEX))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok {'echo': {'text': 'Hello'}"), done.stdout


async def test_kafka_snippet_round_trip(kafka_url: str, unique: str) -> None:
    (block,) = _marked("kafka")
    agent = f"{DOC_AGENT}_{unique}"
    bootstrap = kafka_url.split("://", 1)[1]
    code = _adapt(block.code, agent).replace("localhost:9092", bootstrap)
    async with running_worker(kafka_url, agent):
        done = await run([sys.executable, "-c", code], base_env(KEY_HEX=KEY_HEX), timeout=90)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok {'echo': {'text': 'Hello'}"), done.stdout
