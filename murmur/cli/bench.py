"""``murmur bench``: load-test murmur on a broker with real worker processes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from murmur.bench import report
from murmur.bench.drivers import Progress as Tick
from murmur.bench.fleet import require_psutil
from murmur.bench.suite import Runner, Settings, System, document, murmur_system
from murmur.bench.targets import evaluate
from murmur.brokers.urls import broker_kind
from murmur.cli._common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    BrokerOpt,
    DebugOpt,
    cli_errors,
    display,
    err_console,
    fail,
    note,
    out_console,
    quiet_logging,
    remote_broker_url,
    split_names,
)

DEFAULT_SCENARIOS = "noop,latency,io,scale,signing"


class RichReporter:
    """Progress bars on stderr; updates are batched so the bar costs the publisher little."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._task: TaskID | None = None

    def begin(self, label: str, total: int) -> Tick:
        task = self.progress.add_task(label, total=total)
        self._task = task
        step = max(1, total // 200)
        pending = 0

        def tick(n: int) -> None:
            nonlocal pending
            pending += n
            if pending >= step:
                self.progress.update(task, advance=pending)
                pending = 0

        return tick

    def end(self) -> None:
        if self._task is not None:
            self.progress.remove_task(self._task)
            self._task = None

    def note(self, message: str) -> None:
        self.progress.console.print(message)


def _counts(value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(p) for p in split_names(value))
    except ValueError:
        fail(f"--workers takes comma-separated counts like 1,2,4, got {value!r}", EXIT_USAGE)
    if not counts or min(counts) < 1:
        fail(f"--workers takes counts >= 1, got {value!r}", EXIT_USAGE)
    return counts


def bench(
    broker: BrokerOpt = None,
    scenarios: Annotated[
        str,
        typer.Option(
            "--scenarios",
            "-s",
            metavar="a,b",
            help="Any of noop, latency, io, scale, signing, memory (comma-separated).",
        ),
    ] = DEFAULT_SCENARIOS,
    tasks: Annotated[
        int, typer.Option("--tasks", "-n", min=1, metavar="N", help="No-op tasks per measurement.")
    ] = 20_000,
    io_tasks: Annotated[
        int, typer.Option(min=1, metavar="N", help="Tasks in the I/O-bound measurement.")
    ] = 10_000,
    io_ms: Annotated[
        float, typer.Option(min=0.1, metavar="MS", help="Duration of one I/O-bound task.")
    ] = 20.0,
    latency_tasks: Annotated[
        int, typer.Option(min=1, metavar="N", help="Sequential round trips measured.")
    ] = 2_000,
    memory_tasks: Annotated[
        int, typer.Option(min=10, metavar="N", help="No-op tasks in the memory run.")
    ] = 100_000,
    workers: Annotated[
        str, typer.Option("--workers", "-w", metavar="1,2,4", help="Worker counts for scale.")
    ] = "1,2,4",
    concurrency: Annotated[
        int, typer.Option(min=1, metavar="N", help="--concurrency of every worker.")
    ] = 50,
    prefetch: Annotated[
        int, typer.Option(min=1, metavar="N", help="--prefetch of every worker.")
    ] = 50,
    repeats: Annotated[
        int, typer.Option("--repeats", "-r", min=1, metavar="N", help="Repeat everything N times.")
    ] = 1,
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes (2,000 tasks): a smoke run in seconds.")
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write every figure as JSON.")
    ] = None,
    markdown_path: Annotated[
        Path | None, typer.Option("--markdown", metavar="PATH", help="Write the table as markdown.")
    ] = None,
    chart_path: Annotated[
        Path | None, typer.Option("--chart", metavar="PATH", help="Write a PNG chart (matplotlib).")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Load-test murmur against a broker: worker processes, a publisher, figures.

    Starts `murmur worker` processes hosting a benchmark agent on fresh topics (a
    deployment's own queues are untouched; the benchmark's are removed afterwards, except
    on Kafka), publishes from this process with the
    murmur Client and measures no-op throughput, sequential round-trip latency
    (p50/p90/p99/max), 20 ms I/O-bound throughput against its ideal, worker CPU per task
    and RSS, scale-out over worker counts and the cost of signing. The machine's load
    average is recorded with every figure. Ratios against hand-written ceilings and other
    frameworks: benchmarks/run.py in the repository.

    [bold]Examples[/bold]

      murmur bench -b redis://localhost:6379 --quick
      murmur bench -b nats://localhost:4222 -s noop,latency --json out.json
      murmur bench -b kafka://localhost:9092 --workers 1,2,4 --repeats 3
    """
    with cli_errors(debug):
        url = remote_broker_url(broker)
        kind = broker_kind(url)
        require_psutil()
        quiet_logging(debug)
        if quick:
            tasks, io_tasks, latency_tasks = (
                min(tasks, 2_000),
                min(io_tasks, 1_000),
                min(latency_tasks, 200),
            )
            memory_tasks = min(memory_tasks, 5_000)
        try:
            settings = Settings(
                tasks=tasks,
                io_tasks=io_tasks,
                io_ms=io_ms,
                latency_tasks=latency_tasks,
                memory_tasks=memory_tasks,
                warmup=min(1_000, max(100, tasks // 10)),
                concurrency=concurrency,
                prefetch=prefetch,
                workers=_counts(workers),
                repeats=repeats,
                scenarios=tuple(split_names(scenarios)),
            )
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
        system = murmur_system(kind, url)
        note(f"benchmarking murmur on {display(url)} ({', '.join(settings.scenarios)})")
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        runner = Runner([system], settings, RichReporter(progress))
        with progress:
            asyncio.run(runner.run())
        _report(runner, system, kind, json_path, markdown_path, chart_path)
        if runner.errors:
            raise typer.Exit(EXIT_FAILURE)


def _report(
    runner: Runner,
    system: System,
    kind: str,
    json_path: Path | None,
    markdown_path: Path | None,
    chart_path: Path | None,
) -> None:
    verdicts = [v for v in evaluate(runner.records, [kind]) if v.status != "n/a"]
    if runner.records:
        out_console.print(report.results_table(runner.records, "murmur bench"))
        if verdicts:
            out_console.print(report.targets_table(verdicts, "absolute targets"))
        note(
            "ratios against a hand-written ceiling and other frameworks: "
            "python benchmarks/run.py in the murmur repository"
        )
    doc = document(runner, [system], {"targets": [v.as_dict() for v in verdicts]})
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        note(f"wrote {json_path}")
    if markdown_path is not None:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(report.markdown(runner.records, verdicts))
        note(f"wrote {markdown_path}")
    if chart_path is not None:
        if report.chart(runner.records, chart_path) is None:
            note("[yellow]note:[/] no chart: matplotlib is missing (pip install 'murmur[bench]')")
        else:
            note(f"wrote {chart_path}")
