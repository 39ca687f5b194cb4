"""examples/: the Node.js and redis-cli publishers round-trip a signed task through a real
murmur worker; the Python examples import and run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket

import pytest

from examples.llm_agent import agent as llm
from examples.llm_agent.client import ask
from examples.minimal.app import greet
from examples.service import server
from murmur import Keyring, Worker
from tests.docs._markdown import ROOT
from tests.docs._worker import KEY, KEY_HEX, base_env, run, running_worker

NODE_DIR = ROOT / "examples" / "node_publisher"


def _needs(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")


def _check_result(stdout: str, agent: str, name: str) -> None:
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["status"] == "ok", result
    assert result["output"] == {"echo": {"name": name}, "agent": agent}


@pytest.mark.parametrize("kid", ["default", "named"])
async def test_node_publisher_round_trip(redis_url: str, unique: str, kid: str) -> None:
    _needs("node")
    agent = f"greet_{unique}"
    keys = KEY_HEX if kid == "default" else f"{Keyring(KEY).signing_kid}:{KEY_HEX}"
    env = base_env(MURMUR_SIGNING_KEYS=keys, REDIS_URL=redis_url)
    async with running_worker(redis_url, agent) as worker:
        done = await run(["node", str(NODE_DIR / "publish.mjs"), agent, '{"name": "Node"}'], env)
        assert done.returncode == 0, done.stderr
        _check_result(done.stdout, agent, "Node")
        assert worker.stats.processed == 1


async def test_shell_publisher_round_trip(redis_url: str, unique: str) -> None:
    _needs("bash", "redis-cli", "openssl")
    agent = f"greet_{unique}"
    env = base_env(MURMUR_SIGNING_KEYS=KEY_HEX, REDIS_URL=redis_url)
    async with running_worker(redis_url, agent):
        done = await run(["bash", str(NODE_DIR / "publish.sh"), agent, '{"name": "Shell"}'], env)
    assert done.returncode == 0, done.stderr
    _check_result(done.stdout, agent, "Shell")


async def test_publishers_reject_a_forged_result(redis_url: str, unique: str) -> None:
    """With a key the worker does not hold, the task is rejected (never run); the scripts
    report it with exit code 1 and print the rejected result."""
    _needs("node")
    agent = f"greet_{unique}"
    env = base_env(MURMUR_SIGNING_KEYS="00" * 32, REDIS_URL=redis_url)
    async with running_worker(redis_url, agent) as worker:
        done = await run(["node", str(NODE_DIR / "publish.mjs"), agent, '{"name": "X"}'], env)
        assert worker.stats.processed == 0
    # The worker answers with its own key: the publisher cannot verify it -> exit 2.
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "signature does not verify" in done.stderr


async def test_node_signature_helpers_match_the_vectors() -> None:
    _needs("node")
    vectors = json.loads((ROOT / "tests" / "vectors" / "wire_v1.json").read_text())
    script = f"""
        import {{ sign, keyId, RESULT_DOMAIN }} from {json.dumps(str(NODE_DIR / "publish.mjs"))};
        const key = Buffer.from({json.dumps(vectors["key_hex"])}, "hex");
        console.log(sign(key, Buffer.from({json.dumps(vectors["task"]["body"])})));
        console.log(sign(key, Buffer.from({json.dumps(vectors["result"]["body"])}), RESULT_DOMAIN));
        console.log(keyId(key));
    """
    done = await run(["node", "--input-type=module", "-e", script], base_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        vectors["task"]["signature"],
        vectors["result"]["signature"],
        vectors["kid"],
    ]


# Python examples ------------------------------------------------------------------------


async def test_minimal_example(unique: str) -> None:
    from murmur import Client

    url = f"memory://{unique}"
    async with Worker(broker=url, agents=[greet], heartbeat_seconds=0), Client(url) as client:
        out = await client.run("greet", {"name": "Ada"}, timeout=10)
    assert out == {"message": "Hello, Ada!"}


async def test_llm_agent_streams_tokens(
    unique: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(llm, "MODEL", llm.FakeModel(delay=0.001, overload_rate=0.0))
    url = f"memory://{unique}"
    async with Worker(broker=url, agents=[llm.chat], heartbeat_seconds=0):
        text = await ask("why is the sky blue?", broker=url, max_tokens=10)
    # The tokens were printed one by one as their events arrived, on one line.
    assert len(text.split()) == 10
    assert text + " " in capsys.readouterr().out.splitlines()


async def test_llm_agent_retries_an_overloaded_model(
    unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from murmur import Client

    monkeypatch.setattr(llm, "MODEL", llm.FakeModel(delay=0.001, overload_rate=1.0))
    url = f"memory://{unique}"
    async with Worker(broker=url, agents=[llm.chat], heartbeat_seconds=0), Client(url) as client:
        handle = await client.submit("chat", {"prompt": "hi", "max_tokens": 3}, events=True)
        types = [e.type async for e in handle.events()]
        result = await handle.result(timeout=10)
    assert result.status == "error" and result.error is not None
    assert result.error.type == "ModelOverloaded" and result.attempt == 4
    assert types.count("task.retrying") == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_service_streams_events_then_the_result(
    unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llm, "MODEL", llm.FakeModel(delay=0.001, overload_rate=0.0))
    url, port = f"memory://{unique}", _free_port()
    ready = asyncio.Event()
    async with Worker(broker=url, agents=[llm.chat], heartbeat_seconds=0):
        serving = asyncio.create_task(server.serve("127.0.0.1", port, url, ready=ready))
        try:
            await asyncio.wait_for(ready.wait(), 10)
            health = await _http(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b'{"prompt": "hello", "max_tokens": 5}'
            streamed = await _http(
                port,
                b"POST /run/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body),
            )
            missing = await _http(port, b"GET /nope HTTP/1.1\r\n\r\n")
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
    assert health.startswith(b"HTTP/1.1 200"), health
    assert missing.startswith(b"HTTP/1.1 404"), missing
    head, _, chunked = streamed.partition(b"\r\n\r\n")
    assert b"application/x-ndjson" in head
    lines = [json.loads(line) for line in _dechunk(chunked).splitlines()]
    events = [line["event"] for line in lines[:-1]]
    assert events.count("token") == 5 and "task.progress" in events
    assert lines[-1]["result"]["status"] == "ok"
    assert lines[-1]["result"]["output"]["tokens"] == 5


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def test_examples_have_readmes() -> None:
    for folder in ("minimal", "llm_agent", "service", "node_publisher"):
        assert (ROOT / "examples" / folder / "README.md").is_file(), folder


def test_node_publisher_has_no_npm_dependencies() -> None:
    text = (NODE_DIR / "publish.mjs").read_text()
    imports = set(re.findall(r'from "([^"]+)"', text))
    assert imports and all(name.startswith("node:") for name in imports), imports
    assert not (NODE_DIR / "package.json").exists()
