"""``murmur dlq list|replay|purge AGENT``: inspect and requeue dead letters.

A dead letter is a copy of the original task (body and headers) on ``murmur.<agent>.dead``
plus ``murmur-dead-*`` headers saying why. Replay publishes the original body with the
original headers (signature included: the body is unchanged) minus the dead-letter and
delivery-count headers to ``murmur.<agent>.tasks``, so it starts over with a fresh
delivery count under the same task id, and only then deletes the dead letter.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from murmur.brokers import create_broker
from murmur.brokers.base import Broker, Message, Outbound
from murmur.cli._common import (
    EXIT_USAGE,
    BrokerOpt,
    DebugOpt,
    cli_errors,
    fail,
    human_duration,
    note,
    out_console,
    quiet_logging,
    read_pages,
    remote_broker_url,
)
from murmur.messages import headers as h
from murmur.messages import topics
from murmur.messages.codec import now_ms, peek

app = typer.Typer(
    name="dlq",
    help="Inspect, replay and purge an agent's dead letters (murmur.<agent>.dead).\n\n"
    "[bold]Examples[/bold]\n\n"
    "  murmur dlq list summarize\n"
    "  murmur dlq replay summarize --all\n"
    "  murmur dlq purge summarize --yes",
    no_args_is_help=True,
    rich_markup_mode="rich",
)

# Stripped on replay: the requeued task starts over with a fresh delivery count.
_DEAD_HEADERS = frozenset(
    {h.DEAD_REASON, h.DEAD_ERROR, h.DEAD_AT, h.DEAD_WORKER, h.DELIVERY_COUNT, h.ATTEMPT}
)

AgentArg = Annotated[
    str, typer.Argument(metavar="AGENT", help="The agent's name.", show_default=False)
]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def describe(message: Message) -> dict[str, Any]:
    """One dead letter as ``dlq list --json`` prints it."""
    hd = message.headers
    p = peek(message.body)
    return {
        "id": message.id,
        "task_id": p.task_id if p else None,
        "reason": hd.get(h.DEAD_REASON),
        "error": hd.get(h.DEAD_ERROR),
        "delivery_count": _int(hd.get(h.DELIVERY_COUNT)),
        "dead_at": _int(hd.get(h.DEAD_AT)) or message.timestamp_ms or None,
        "worker": hd.get(h.DEAD_WORKER),
        "bytes": len(message.body),
    }


def replay_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _DEAD_HEADERS}


@app.command("list")
def list_(
    agent: AgentArg,
    broker: BrokerOpt = None,
    limit: Annotated[int, typer.Option(min=1, metavar="N", help="Show at most N.")] = 50,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print a JSON array of {id, task_id, reason, error, delivery_count, "
            "dead_at (unix ms), worker, bytes}.",
        ),
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """List an agent's dead letters, oldest first.

    [bold]Examples[/bold]

      murmur dlq list summarize --broker redis://localhost:6379
      murmur dlq list summarize --limit 500 --json | jq '.[].reason'
    """
    with cli_errors(debug):
        quiet_logging(debug)
        topics.validate_agent_name(agent)
        url = remote_broker_url(broker)
        rows, total = asyncio.run(_list(url, agent, limit))
        if as_json:
            print(json.dumps(rows, indent=2 if out_console.is_terminal else None))
            return
        if not rows:
            note(f"no dead letters on {topics.dead_topic(agent)}")
            return
        now = now_ms()
        table = Table(
            title=f"{topics.dead_topic(agent)}: {len(rows)} of {total} (oldest first)",
            title_justify="left",
        )
        for col in ("id", "task id", "reason", "error", "deliveries", "dead at", "worker"):
            table.add_column(col, overflow="fold")
        for r in rows:
            age = (now - r["dead_at"]) / 1000 if r["dead_at"] else None
            table.add_row(
                escape(r["id"]), escape(r["task_id"] or "(undecodable)"),
                escape(r["reason"] or "-"), escape((r["error"] or "-")[:120]),
                str(r["delivery_count"] or "-"),
                f"{human_duration(age)} ago" if age is not None else "-",
                escape(r["worker"] or "-"),
            )  # fmt: skip
        out_console.print(table)
        note(f"replay with: murmur dlq replay {agent} --id ID (or --all)")


async def _list(url: str, agent: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    async with create_broker(url) as broker:
        messages = await broker.read(topics.dead_topic(agent), limit=limit)
        total = (await broker.queue_stats(agent)).dead
    return [describe(m) for m in messages], max(total, len(messages))


@app.command()
def replay(
    agent: AgentArg,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", metavar="ID", help="Dead letter id from 'dlq list' (repeatable)."),
    ] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    broker: BrokerOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Requeue dead letters to murmur.<agent>.tasks (same task id, fresh delivery count).

    Each dead letter is republished first and deleted after, so a failure in between
    leaves a copy rather than losing the task.

    [bold]Examples[/bold]

      murmur dlq replay summarize --id 1718000000000-0 --id 1718000000001-0
      murmur dlq replay summarize --all --broker nats://localhost:4222
    """
    with cli_errors(debug):
        quiet_logging(debug)
        topics.validate_agent_name(agent)
        if bool(ids) == all_:
            fail("say which dead letters: --id ID (repeatable) or --all", EXIT_USAGE)
        url = remote_broker_url(broker)
        replayed, missing = asyncio.run(_replay(url, agent, set(ids or ()), all_))
        note(f"replayed {replayed} dead letter(s) to {topics.task_topic(agent)}")
        if missing:
            fail(f"not found on {topics.dead_topic(agent)}: {', '.join(sorted(missing))}")


async def _replay(url: str, agent: str, ids: set[str], everything: bool) -> tuple[int, set[str]]:
    dead = topics.dead_topic(agent)
    async with create_broker(url) as broker:
        await broker.ensure_task_topic(agent)
        replayed = 0
        wanted = set(ids)
        # Only what is dead now: replayed tasks that die again are not chased in a loop.
        async for page in read_pages(broker, dead, until_ms=now_ms()):
            batch = page if everything else [m for m in page if m.id in wanted]
            if batch:
                replayed += await _requeue(broker, agent, batch)
                wanted -= {m.id for m in batch}
            if not everything and not wanted:
                break
    return replayed, wanted


async def _requeue(broker: Broker, agent: str, batch: list[Message]) -> int:
    out = []
    for m in batch:
        p = peek(m.body)
        key = p.task_id.encode() if p and p.task_id else None
        out.append(Outbound(topics.task_topic(agent), m.body, replay_headers(m.headers), key))
    await broker.publish(out)
    await broker.delete(topics.dead_topic(agent), [m.id for m in batch])
    return len(batch)


@app.command()
def purge(
    agent: AgentArg,
    yes: Annotated[bool, typer.Option("--yes", help="Really delete them all.")] = False,
    broker: BrokerOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Delete every dead letter of AGENT (refuses without --yes).

    [bold]Example[/bold]

      murmur dlq purge summarize --yes --broker redis://localhost:6379
    """
    with cli_errors(debug):
        quiet_logging(debug)
        topics.validate_agent_name(agent)
        if not yes:
            fail(
                f"this deletes every dead letter on {topics.dead_topic(agent)}; "
                "add --yes to confirm (see them first with: murmur dlq list " + agent + ")",
                EXIT_USAGE,
            )
        url = remote_broker_url(broker)
        removed = asyncio.run(_purge(url, agent))
        note(f"purged {removed} dead letter(s) from {topics.dead_topic(agent)}")


async def _purge(url: str, agent: str) -> int:
    async with create_broker(url) as broker:
        return await broker.purge(topics.dead_topic(agent))
