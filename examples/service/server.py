"""A service that publishes tasks and streams their events to its HTTP caller.

Plain asyncio, no web framework: the point is the murmur part. One ``Client`` is shared
by every request (one results subscription per process, not per request).

    python -m examples.service.server --port 8080          # MURMUR_BROKER_URL=...
    curl -N localhost:8080/run/chat -d '{"prompt": "hello"}'
    curl localhost:8080/health

``POST /run/<agent>`` submits the body (JSON) as the task input and answers with
``application/x-ndjson``: one line per event (``{"event": ..., "payload": ...}``) as the
worker reports it, then a last line ``{"result": {...}}``. ``GET /health`` is 200 while
the broker answers. ``--every S`` also publishes a task every S seconds and logs the
result (the ``publisher`` service of docker-compose.yml runs that way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from typing import Any

import msgspec

from murmur import Client
from murmur.errors import MurmurError

MAX_BODY = 1 << 20


class Service:
    def __init__(self, client: Client, timeout: float = 120.0) -> None:
        self.client = client
        self.timeout = timeout

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, body = await _read_request(reader)
            if method == "GET" and path == "/health":
                ok = await self.client.broker.ping(timeout=2.0)
                await _respond(writer, 200 if ok else 503, {"status": "ok" if ok else "down"})
            elif method == "POST" and path.startswith("/run/"):
                await self.run(writer, path.removeprefix("/run/"), body)
            else:
                await _respond(writer, 404, {"error": "try POST /run/<agent> or GET /health"})
        except (ValueError, MurmurError) as exc:
            with contextlib.suppress(ConnectionError):
                await _respond(writer, 400, {"error": str(exc)})
        except ConnectionError:
            pass  # the caller went away; the task still runs and its result is dropped
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def run(self, writer: asyncio.StreamWriter, agent: str, body: bytes) -> None:
        task_input = msgspec.json.decode(body) if body.strip() else None
        handle = await self.client.submit(agent, task_input, events=True, ttl=self.timeout)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        async with asyncio.timeout(self.timeout):
            async for event in handle.events():
                await _chunk(writer, {"event": event.type, "payload": event.payload})
            result = await handle.result()
        await _chunk(writer, {"result": msgspec.to_builtins(result)})
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)
    }
    length = int(headers.get("content-length", "0"))
    if length > MAX_BODY:
        raise ValueError(f"body over {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    return method.upper(), path.split("?", 1)[0], body


async def _respond(writer: asyncio.StreamWriter, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode() + b"\n"
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}
    writer.write(
        f"HTTP/1.1 {status} {reason.get(status, '')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()


async def _chunk(writer: asyncio.StreamWriter, doc: Any) -> None:
    line = msgspec.json.encode(doc) + b"\n"
    writer.write(b"%x\r\n%s\r\n" % (len(line), line))
    await writer.drain()


async def publish_every(client: Client, seconds: float, agent: str, task_input: Any) -> None:
    """Publish one task every ``seconds`` and log its outcome (a heartbeat of the demo)."""
    n = 0
    while True:
        n += 1
        try:
            result = await (await client.submit(agent, task_input, ttl=60)).result(timeout=60)
            print(
                json.dumps(
                    {
                        "published": n,
                        "status": result.status,
                        "worker": result.worker_id,
                        "output": result.output,
                    }
                ),
                flush=True,
            )
        except (TimeoutError, MurmurError) as exc:
            print(json.dumps({"published": n, "error": str(exc)}), flush=True)
        await asyncio.sleep(seconds)


async def serve(
    host: str,
    port: int,
    broker: str | None = None,
    every: float = 0.0,
    agent: str = "chat",
    task_input: Any = None,
    ready: asyncio.Event | None = None,
) -> None:
    async with Client(broker or os.environ.get("MURMUR_BROKER_URL")) as client:
        service = Service(client)
        server = await asyncio.start_server(service.handle, host, port)
        background = []
        if every > 0:
            background.append(asyncio.create_task(publish_every(client, every, agent, task_input)))
        print(f"listening on http://{host}:{port} (POST /run/<agent>, GET /health)", flush=True)
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            for t in background:
                t.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--broker", help="broker URL (default: MURMUR_BROKER_URL)")
    parser.add_argument("--every", type=float, default=0.0, help="publish a task every S s")
    parser.add_argument("--agent", default="chat", help="agent --every publishes to")
    parser.add_argument("--input", default='{"prompt": "hello from the publisher"}')
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve(args.host, args.port, args.broker, args.every, args.agent, json.loads(args.input))
        )


if __name__ == "__main__":
    main()
