"""``murmur submit AGENT [INPUT_JSON | -]``: publish one task, optionally wait for its result.

stdout carries only data (the task id, or with ``--wait`` the result JSON) so the command
composes with ``jq``; human notes and ``--events`` lines go to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Annotated, Any

import msgspec
import typer
from rich.markup import escape

from murmur.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    BrokerOpt,
    DebugOpt,
    cli_errors,
    err_console,
    fail,
    note,
    out_console,
    quiet_logging,
    remote_broker_url,
    stdout_is_tty,
)
from murmur.client import Client, TaskHandle
from murmur.messages.envelopes import ResultMessage, RuntimeEvent
from murmur.messages.topics import validate_agent_name


def submit(
    agent: Annotated[
        str, typer.Argument(metavar="AGENT", help="Name of the agent to run.", show_default=False)
    ],
    input_json: Annotated[
        str | None,
        typer.Argument(
            metavar="INPUT_JSON",
            help="The task input as JSON; '-' reads it from stdin; omitted means null.",
            show_default=False,
        ),
    ] = None,
    broker: BrokerOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for the result and print it as JSON.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            metavar="S",
            help="Give up waiting after S seconds (exit 3; implies --wait).  \\[default: none]",
        ),
    ] = None,
    ttl: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            metavar="S",
            help="Workers reject the task if it is still queued after S seconds.",
        ),
    ] = None,
    task_id: Annotated[
        str | None,
        typer.Option(
            "--task-id",
            metavar="ID",
            help="Idempotency key (<= 128 chars): the same id is answered, not run twice.",
        ),
    ] = None,
    events: Annotated[
        bool,
        typer.Option("--events", help="Stream the task's events to stderr (implies --wait)."),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Publish one task to AGENT and print its task id (or, with --wait, its result).

    Tasks are signed with the first key of MURMUR_SIGNING_KEYS when it is set.
    Exit codes: 0 ok · 1 task failed or was rejected · 2 usage (bad JSON, bad URL, ...) ·
    3 timed out waiting.

    [bold]Examples[/bold]

      murmur submit wordcount '{"text": "hello brave new world"}' --wait
      echo '{"text": "from stdin"}' | murmur submit wordcount - --wait --timeout 30
      murmur submit summarize '{"id": 1, "text": "..."}' --events --broker nats://localhost:4222
      murmur submit wordcount '{"text": "hi"}' --wait | jq .output
    """
    with cli_errors(debug):
        quiet_logging(debug)
        validate_agent_name(agent)
        if task_id is not None and not 1 <= len(task_id) <= 128:
            fail("--task-id must be 1 to 128 characters", EXIT_USAGE)
        value = _parse_input(input_json)
        url = remote_broker_url(broker)
        waiting = wait or events or timeout is not None
        code = asyncio.run(_submit(url, agent, value, waiting, timeout, ttl, task_id, events))
    raise typer.Exit(code)


def _parse_input(raw: str | None) -> Any:
    if raw is None:
        return None
    source = "INPUT_JSON"
    if raw == "-":
        raw, source = sys.stdin.read(), "stdin"
    try:
        return msgspec.json.decode(raw.strip() or "null")
    except msgspec.DecodeError as exc:
        fail(
            f"{source} is not valid JSON ({exc}); quote it for the shell, "
            """e.g. '{"text": "hi"}'""",
            EXIT_USAGE,
        )


async def _submit(
    url: str,
    agent: str,
    value: Any,
    waiting: bool,
    timeout: float | None,
    ttl: float | None,
    task_id: str | None,
    events: bool,
) -> int:
    async with Client(url) as client:
        handle = await client.submit(agent, value, task_id=task_id, ttl=ttl, events=events)
        tid = handle.task_id
        if not waiting:
            # Drop the handle before the client closes: a closing client fails the futures
            # of handles still alive, which asyncio would log as never retrieved.
            del handle
            print(tid, flush=True)
            return EXIT_OK
        note(f"[dim]task {tid} submitted to {agent}; waiting for the result…[/]")
        try:
            async with asyncio.timeout(timeout):
                result: ResultMessage | None = await _await_result(handle, events)
        except TimeoutError:
            result = None
        del handle
    if result is None:
        note(
            f"[bold red]timeout:[/] no result for task {tid} within {timeout}s "
            "(it may still run; its result will not be printed)"
        )
        return EXIT_TIMEOUT
    _print_result(result)
    if result.ok:
        return EXIT_OK
    err = result.error
    detail = f"{err.type}: {err.message}" if err else "no error details"
    note(f"[bold red]task {result.status}:[/] {escape(detail)}")
    return EXIT_FAILURE


async def _await_result(handle: TaskHandle, events: bool) -> ResultMessage:
    if not events:
        return await handle.result()
    printer = asyncio.create_task(_print_events(handle))
    try:
        result = await handle.result()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(printer), 2.0)  # let trailing events land
        return result
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer


async def _print_events(handle: TaskHandle) -> None:
    async for event in handle.events():
        _print_event(event)


def _print_event(event: RuntimeEvent) -> None:
    payload = msgspec.to_builtins(event.payload)
    if err_console.is_terminal:
        text = json.dumps(payload, separators=(", ", ": ")) if payload is not None else ""
        err_console.print(
            f"[cyan]{escape(event.type)}[/] [dim]{escape(event.worker_id)}[/] {escape(text)}"
        )
    else:
        line = {"event": event.type, "worker_id": event.worker_id, "ts": event.ts}
        print(json.dumps({**line, "payload": payload}), file=sys.stderr, flush=True)


def _print_result(result: ResultMessage) -> None:
    doc = msgspec.json.encode(result).decode()
    if stdout_is_tty():
        out_console.print_json(doc)
    else:
        print(doc, flush=True)
