"""``murmur worker APP``: run agents as a worker, or a supervised pool of worker processes."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import sys
from collections.abc import Coroutine
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer

from murmur.app_loading import AppLoadError, LoadedApp, load_app, select_agents
from murmur.cli._common import (
    EXIT_USAGE,
    BrokerOpt,
    DebugOpt,
    cli_errors,
    fail,
    from_command_line,
    note,
    split_names,
)
from murmur.config import CONCURRENCY, LOG_FORMAT, LOG_LEVEL, PREFETCH
from murmur.logs import configure_logging
from murmur.supervisor import SUPERVISOR_PID_ENV, Supervisor, orphan_watchdog
from murmur.worker import Worker

PRECEDENCE = """
[bold]Configuration[/bold]: a flag beats the environment, which beats the default.

  setting          flag                  environment            default
  broker URL       --broker              MURMUR_BROKER_URL      (required)
  signing keys     -                     MURMUR_SIGNING_KEYS    unsigned
  concurrency      --concurrency         MURMUR_CONCURRENCY     10
  prefetch         --prefetch            MURMUR_PREFETCH        5
  log format       --log-format          MURMUR_LOG_FORMAT      console on a TTY, else json
  log level        --log-level/--debug   MURMUR_LOG_LEVEL       info
  consumer id      --consumer-id         -                      host-pid-random
  heartbeat        --heartbeat           -                      30 s
  reclaim          --reclaim-ms          -                      30000 ms
  max deliveries   --max-deliveries      -                      5

MURMUR_SIGNING_KEYS is comma-separated kid:hexkey or bare hex keys (environment only,
so keys never show up in `ps`).
"""


class LogFormat(StrEnum):
    json = "json"
    console = "console"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"
    critical = "critical"


# Flags that configure a Worker: meaningless when APP is an already configured Worker.
_WORKER_SETTINGS = (
    "broker",
    "agents",
    "concurrency",
    "prefetch",
    "consumer_id",
    "heartbeat",
    "reclaim_ms",
    "max_deliveries",
)
# Flags the supervisor sets per child (or consumes itself) instead of passing them on.
_NOT_FORWARDED = frozenset({"app", "processes", "reload", "consumer_id", "metrics_port"})


def worker(
    ctx: typer.Context,
    app: Annotated[
        str,
        typer.Argument(
            metavar="APP",
            help="'module:attribute' (an agent, a list/dict of agents, or a Worker) or "
            "'module' (its @agent functions are discovered).",
            show_default=False,
        ),
    ],
    broker: BrokerOpt = None,
    agents: Annotated[
        str | None,
        typer.Option(metavar="a,b", help="Host only these agents of APP (comma-separated)."),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar=CONCURRENCY,
            show_envvar=True,
            metavar="N",
            help="Tasks run at once by each process.  \\[default: 10]",
        ),
    ] = None,
    prefetch: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar=PREFETCH,
            show_envvar=True,
            metavar="N",
            help="Tasks claimed ahead of free slots.  \\[default: 5]",
        ),
    ] = None,
    consumer_id: Annotated[
        str | None,
        typer.Option(
            "--consumer-id",
            metavar="ID",
            help="Stable member name (e.g. the pod name): a restart picks up its own pending "
            "work. With --processes N, child i is '<ID>-<i>' (ID defaults to the hostname).",
        ),
    ] = None,
    heartbeat: Annotated[
        float,
        typer.Option(min=0, metavar="S", help="Heartbeat period in seconds; 0 disables."),
    ] = 30.0,
    reclaim_ms: Annotated[
        int,
        typer.Option(
            "--reclaim-ms",
            min=0,
            metavar="MS",
            help="Reclaim work idle this long from dead workers; 0 disables.",
        ),
    ] = 30_000,
    max_deliveries: Annotated[
        int,
        typer.Option(min=1, metavar="N", help="Deliveries before a task is dead-lettered."),
    ] = 5,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            metavar="P",
            help="Serve Prometheus /metrics, /health and /ready on this port "
            "(child i of --processes uses P+i).",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(metavar="HOST", help="Interface for --metrics-port.")
    ] = "0.0.0.0",  # noqa: S104 - scraped from outside the pod/host
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Run N worker processes under a supervisor that restarts crashed ones. "
            "Python needs processes to use more than one CPU core.",
        ),
    ] = 1,
    reload: Annotated[
        bool,
        typer.Option(
            "--reload", help="Restart on code changes (development; needs murmur\\[reload])."
        ),
    ] = False,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            case_sensitive=False,
            envvar=LOG_FORMAT,
            show_envvar=True,
            help="Log lines as json or console.  \\[default: console on a TTY, else json]",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            case_sensitive=False,
            envvar=LOG_LEVEL,
            show_envvar=True,
            help="Minimum log level.  \\[default: info]",
        ),
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Run a worker that hosts APP's agents.

    The worker joins each agent's competing-consumer group, runs tasks with bounded
    concurrency, answers them, and drains in-flight work on Ctrl-C / SIGTERM (press
    twice to exit at once). The current directory is importable, so [bold]app[/bold]
    finds ./app.py.

    [bold]Examples[/bold]

      murmur worker app --broker redis://localhost:6379
      murmur worker app:summarize --concurrency 20 --metrics-port 9100
      murmur worker app --agents summarize,translate --processes 4
      MURMUR_BROKER_URL=nats://localhost:4222 murmur worker app --reload
    """
    with cli_errors(debug):
        level = "debug" if debug else (log_level.value if log_level else None)
        configure_logging(log_format.value if log_format else None, level)
        if processes > 1 or reload:
            code = _supervise(ctx, app, processes, reload, consumer_id, metrics_port)
            raise typer.Exit(code)
        loaded = load_app(app)
        built = _build_worker(ctx, loaded, split_names(agents))
        _run(_serve(built, metrics_port, metrics_host))


def _build_worker(ctx: typer.Context, loaded: LoadedApp, names: list[str]) -> Worker:
    p = ctx.params
    if loaded.worker is not None:
        if SUPERVISOR_PID_ENV in os.environ and from_command_line(ctx, "consumer_id"):
            fail(
                f"--processes needs APP to name agents, not a configured Worker ({loaded.spec!r}): "
                "each process needs its own consumer id. Point APP at the module or the agents.",
                EXIT_USAGE,
            )
        given = [n for n in _WORKER_SETTINGS if from_command_line(ctx, n)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            fail(
                f"APP {loaded.spec!r} is a configured Worker, so {flags} would be ignored: set "
                "it in the Worker(...) call, or point APP at the agents (e.g. the module).",
                EXIT_USAGE,
            )
        return loaded.worker
    try:
        chosen = select_agents(loaded, names)
    except AppLoadError as exc:
        fail(str(exc), EXIT_USAGE)
    return Worker(
        broker=p["broker"],
        agents=chosen,
        concurrency=p["concurrency"],
        prefetch=p["prefetch"],
        consumer_id=p["consumer_id"],
        heartbeat_seconds=p["heartbeat"],
        reclaim_min_idle_ms=p["reclaim_ms"] or None,
        max_deliveries=p["max_deliveries"],
    )


async def _serve(worker: Worker, metrics_port: int | None, metrics_host: str) -> None:
    if worker.broker.scheme == "memory":
        note(
            "[yellow]note:[/] memory:// lives inside this process: no client elsewhere can "
            "reach this worker (use redis://, nats:// or kafka://)"
        )
    server = None
    if metrics_port is not None:
        from murmur.metrics import MetricsServer

        server = MetricsServer(worker, metrics_port, metrics_host)
        await server.start()
        note(f"metrics on http://{metrics_host}:{server.port}/metrics (/health, /ready)")
    orphan_watchdog()
    tune_gc()
    try:
        await worker.run()
    finally:
        if server is not None:
            await server.stop()


# Young-generation collections every 700 container allocations cost a busy worker about 7 %
# of its CPU on no-op tasks (gc.callbacks, Kafka, this VM); at 10,000 they cost under 1 %.
# Nearly all of a task's objects die by reference counting, so little waits for them.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect less often, and never walk the objects of startup again.

    ``gc.freeze()`` moves what is alive now (modules, the app, its agents) out of the
    collector's reach, so full collections walk only what the worker made since. Only the
    ``murmur worker`` process does this: the process is ours. An application that embeds
    :class:`~murmur.Worker` keeps its own settings.
    """
    gc.collect()
    gc.freeze()
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), *older)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when the ``speed`` extra is installed, else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


# supervision -------------------------------------------------------------------------------


def default_base_id() -> str:
    """The hostname, made a valid consumer id (``[A-Za-z0-9_-]``)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-_")[:80]
    return base or "worker"


def _forwarded(ctx: typer.Context) -> list[str]:
    """The command-line options the user gave, minus those the supervisor sets per child.

    Only COMMANDLINE-sourced values are repeated: settings from the environment reach the
    children through the environment (a broker password never lands in ``ps`` output).
    """
    out: list[str] = []
    for param in ctx.command.params:
        name = param.name
        opts = getattr(param, "opts", ())
        if not name or name in _NOT_FORWARDED or getattr(param, "param_type_name", "") != "option":
            continue
        if not from_command_line(ctx, name):
            continue
        value = ctx.params[name]
        flag = next(o for o in opts if o.startswith("--"))
        if getattr(param, "is_flag", False):
            if value:
                out.append(flag)
        elif value is not None:
            out += [flag, value.value if isinstance(value, Enum) else str(value)]
    return out


def _supervise(
    ctx: typer.Context,
    app: str,
    processes: int,
    reload: bool,
    consumer_id: str | None,
    metrics_port: int | None,
) -> int:
    watch: list[str] = []
    if reload:
        try:
            import watchfiles  # noqa: F401
        except ImportError:
            fail(
                "--reload needs the 'reload' extra: pip install 'murmur[reload]' (watchfiles)",
                EXIT_USAGE,
            )
        watch = [os.getcwd()]
    base = consumer_id or default_base_id()
    forwarded = _forwarded(ctx)

    def command(index: int) -> list[str]:
        argv = [sys.executable, "-m", "murmur", "worker", app, *forwarded]
        if processes > 1:
            argv += ["--consumer-id", f"{base}-{index}"]
        elif consumer_id:
            argv += ["--consumer-id", consumer_id]
        if metrics_port is not None:
            port = metrics_port + index if metrics_port else 0
            argv += ["--metrics-port", str(port)]
        return argv

    return Supervisor(command, processes, watch=watch).run()
