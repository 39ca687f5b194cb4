"""``murmur status``: live workers from their presence records, and each agent's queue."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from murmur.brokers import create_broker
from murmur.brokers.base import Broker, QueueStats
from murmur.cli._common import (
    BrokerOpt,
    DebugOpt,
    cli_errors,
    display,
    human_duration,
    iso_ms,
    out_console,
    quiet_logging,
    remote_broker_url,
    split_names,
)
from murmur.cli._fleet import RecentAgents, live_workers, worker_doc
from murmur.errors import BrokerUnavailable
from murmur.messages.codec import now_ms
from murmur.messages.topics import validate_agent_name

REFRESH_S = 2.0

SCHEMA = """
[bold]--json[/bold] prints one document (with --watch: one per line, every 2 s):

  {
    "generated_at": 1718000000000,          unix ms
    "broker": "redis://localhost:6379",      password removed
    "workers": [                             live workers only, sorted by worker_id
      {"worker_id", "host", "pid", "agents": \\[str], "version",
       "in_flight", "processed", "failed", "concurrency", "prefetch",
       "started_at" (unix ms), "uptime_s", "interval_s" (heartbeat period),
       "last_beat_at" (unix ms), "last_beat_age_s", "expires_at" (unix ms)}
    ],
    "agents": [                              of live workers, seen in heartbeats
                                             (10 min), or named by --agents
      {"agent", "workers" (live workers hosting it), "depth" (queued, not yet
       delivered), "pending" (delivered, not acknowledged), "dead" (dead letters),
       "consumers" (group members the broker knows, or null), "error" (str or null)}
    ]
  }

A worker is live while its presence record on the broker is: rewritten every
heartbeat, it expires 3 heartbeat periods (+2 s) after the last beat ("expires_at")
and is removed at once when the worker stops gracefully.
"""


def status(
    broker: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (schema below).")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-W", help="Refresh every 2 s until Ctrl-C.")
    ] = False,
    agents: Annotated[
        str | None,
        typer.Option(
            metavar="a,b",
            help="Also show these agents' queues (those of live workers and those seen in "
            "heartbeats are always shown).",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Show live workers and each agent's queue: depth, pending work, dead letters.

    Workers are those whose presence record is live: each worker rewrites its record
    every heartbeat; it expires after 3 missed beats and is removed on a graceful stop.

    [bold]Examples[/bold]

      murmur status --broker redis://localhost:6379
      murmur status --watch --agents summarize,translate
      murmur status --json | jq '.workers | length'
    """
    with cli_errors(debug):
        quiet_logging(debug)
        extra = split_names(agents)
        for name in extra:
            validate_agent_name(name)
        url = remote_broker_url(broker)
        try:
            asyncio.run(_status(url, extra, as_json, watch))
        except KeyboardInterrupt:
            if not watch:
                raise


async def _status(url: str, extra: list[str], as_json: bool, watch: bool) -> None:
    async with create_broker(url) as broker:
        recent = RecentAgents()
        doc = await snapshot(broker, recent, extra)
        if as_json:
            print(json.dumps(doc, indent=None if watch else 2), flush=True)
            while watch:
                await asyncio.sleep(REFRESH_S)
                print(json.dumps(await snapshot(broker, recent, extra)), flush=True)
            return
        if not watch:
            out_console.print(render(doc))
            return
        with Live(render(doc), console=out_console, auto_refresh=False) as live:
            while True:
                await asyncio.sleep(REFRESH_S)
                try:
                    view: RenderableType = render(await snapshot(broker, recent, extra))
                except BrokerUnavailable as exc:
                    view = Text(f"broker unavailable: {exc} (retrying)", style="bold red")
                live.update(view, refresh=True)


async def snapshot(broker: Broker, recent: RecentAgents, extra: list[str]) -> dict[str, Any]:
    """The ``status --json`` document."""
    live, seen = await asyncio.gather(live_workers(broker), recent.refresh(broker, now_ms()))
    now = now_ms()
    names = sorted({a for w in live for a in w.agents} | seen | set(extra))
    stats = await asyncio.gather(*(broker.queue_stats(n) for n in names), return_exceptions=True)
    agents = []
    for name, st in zip(names, stats, strict=True):
        if isinstance(st, BrokerUnavailable):
            raise st
        hosts = sum(1 for w in live if name in w.agents)
        entry: dict[str, Any] = {"agent": name, "workers": hosts}
        if isinstance(st, QueueStats):
            entry.update(
                depth=st.depth, pending=st.pending, dead=st.dead, consumers=st.consumers,
                error=None,
            )  # fmt: skip
        else:
            entry.update(depth=None, pending=None, dead=None, consumers=None, error=str(st))
        agents.append(entry)
    return {
        "generated_at": now,
        "broker": display(broker.url),
        "workers": [worker_doc(w, now) for w in live],
        "agents": agents,
    }


def render(doc: dict[str, Any], width: int | None = None) -> RenderableType:
    """Tables for humans; below 100 columns host and pid are left out (see --json)."""
    narrow = (width or out_console.width) < 100
    header = Text.assemble(
        ("murmur status", "bold"),
        f"  ·  {doc['broker']}  ·  {iso_ms(doc['generated_at'])}",
    )
    parts: list[RenderableType] = [header]
    workers = doc["workers"]
    if workers:
        wt = Table(
            title=f"Workers ({len(workers)} live)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            caption="busy = in-flight, done = processed; widen the terminal for host and pid"
            if narrow
            else None,
            caption_justify="left",
        )
        columns = [
            ("worker", "left"), ("host", "left"), ("pid", "right"), ("agents", "left"),
            ("in-flight", "right"), ("processed", "right"), ("failed", "right"),
            ("uptime", "right"), ("last beat", "right"),
        ]  # fmt: skip
        if narrow:
            short = {"in-flight": "busy", "processed": "done", "last beat": "beat"}
            columns = [(short.get(c, c), j) for c, j in columns if c not in ("host", "pid")]
        for col, justify in columns:
            text = col in ("worker", "host", "agents")
            wt.add_column(
                col,
                justify=justify,  # type: ignore[arg-type]
                overflow="fold",
                no_wrap=not text,
                min_width=min(16, max(len(w["worker_id"]) for w in workers))
                if col == "worker"
                else None,
            )
        for w in workers:
            cells = [
                escape(w["worker_id"]), escape(w["host"]), str(w["pid"]),
                escape(", ".join(w["agents"])), str(w["in_flight"]), str(w["processed"]),
                f"[red]{w['failed']}[/]" if w["failed"] else "0",
                human_duration(w["uptime_s"]), human_duration(w["last_beat_age_s"]),
            ]  # fmt: skip
            if narrow:
                del cells[1:3]
            wt.add_row(*cells)
        parts.append(wt)
    else:
        parts.append(
            Text(
                "No live workers: none has a live presence record (a worker keeps one "
                "while it runs, with heartbeats on). Start one with: "
                "murmur worker APP --broker URL",
                style="yellow",
            )
        )
    if doc["agents"]:
        at = Table(title="Agents", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("agent", "workers", "queued", "pending", "dead letters"):
            at.add_column(
                col,
                justify="left" if col == "agent" else "right",
                overflow="fold",
                no_wrap=col != "agent",
            )
        for a in doc["agents"]:
            if a["error"]:
                at.add_row(escape(a["agent"]), str(a["workers"]), f"[red]{escape(a['error'])}[/]")
                continue
            starving = a["workers"] == 0 and (a["depth"] or a["pending"])
            at.add_row(
                escape(a["agent"]),
                f"[red]{a['workers']}[/]" if starving else str(a["workers"]),
                str(a["depth"]), str(a["pending"]),
                f"[yellow]{a['dead']}[/]" if a["dead"] else "0",
            )  # fmt: skip
        parts.append(at)
    return Group(*parts)
