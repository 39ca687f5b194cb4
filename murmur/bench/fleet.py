"""Worker processes for a benchmark: start them, know when they are ready, read their cost.

Workers run as separate processes (as in production) so the publisher's own work never
shows up in the worker's CPU or memory figures. Each process writes its output to a log
file; a process is *ready* once a given marker appears there (the murmur worker prints
its banner after it joined its groups). CPU is read from ``psutil`` (user + system time
of the process and its children), so CPU per task is the delta over a measured window
divided by the tasks finished in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - reported by require_psutil()
    psutil = None

# Printed by `murmur worker` once it has joined every agent's group (Worker.run's banner).
MURMUR_READY = "Ctrl-C drains in-flight tasks"


def require_psutil() -> None:
    """psutil is how worker CPU and RSS are measured: fail early with the install hint."""
    if psutil is None:
        raise RuntimeError("benchmarks need psutil: pip install 'murmur[bench]'")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start one worker process and how to tell it is ready."""

    argv: Sequence[str]
    ready: str = MURMUR_READY
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


def murmur_worker_argv(
    url: str,
    consumer_id: str,
    *,
    app: str = "murmur.bench.app",
    concurrency: int = 50,
    prefetch: int = 50,
    python: str | None = None,
) -> list[str]:
    """``python -m murmur worker APP`` with the flags a benchmark run needs."""
    return [
        python or sys.executable, "-m", "murmur", "worker", app,
        "--broker", url, "--consumer-id", consumer_id,
        "--concurrency", str(concurrency), "--prefetch", str(prefetch),
        "--heartbeat", "0",
    ]  # fmt: skip


class FleetError(RuntimeError):
    """A worker process exited or never became ready (the message has its log tail)."""


class Fleet:
    """A set of worker processes started together and stopped together."""

    def __init__(self, specs: Sequence[WorkerSpec], workdir: Path) -> None:
        require_psutil()
        self.specs = list(specs)
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []
        self._ps: list[Any] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def start(self, timeout: float = 60.0) -> None:
        """Start every process, then wait until each printed its ready marker."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i, spec in enumerate(self.specs):
            self._spawn(i, spec)
        deadline = time.monotonic() + timeout
        waiting = set(range(len(self.procs)))
        while waiting:
            for i in list(waiting):
                if self.specs[i].ready in self._read_log(i):
                    waiting.discard(i)
                elif self.procs[i].poll() is not None:
                    raise FleetError(
                        f"worker {i} exited with code {self.procs[i].returncode} before it was "
                        f"ready:\n{self.log_tail(i)}"
                    )
            if waiting and time.monotonic() > deadline:
                i = min(waiting)
                raise FleetError(f"worker {i} not ready within {timeout:g}s:\n{self.log_tail(i)}")
            if waiting:
                await asyncio.sleep(0.05)

    def _spawn(self, i: int, spec: WorkerSpec) -> None:
        log_path = self.workdir / f"worker-{i}-{os.getpid()}-{time.monotonic_ns()}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(  # noqa: S603 - argv built by the benchmark itself
                list(spec.argv),
                env={**os.environ, **spec.env},
                cwd=spec.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        self._logs.append(log_path)
        self._ps.append(psutil.Process(proc.pid))

    def _read_log(self, i: int) -> str:
        try:
            return self._logs[i].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, i: int, lines: int = 25) -> str:
        return "\n".join(self._read_log(i).splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise if a worker died during a measurement (its figures would be meaningless)."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                raise FleetError(
                    f"worker {i} exited with code {proc.returncode}:\n{self.log_tail(i)}"
                )

    def _family(self, i: int) -> list[Any]:
        ps = self._ps[i]
        try:
            return [ps, *ps.children(recursive=True)]
        except psutil.Error:
            return [ps]

    def cpu_seconds(self) -> float:
        """User + system CPU of every worker process (and children) since it started."""
        total = 0.0
        for i in range(len(self._ps)):
            for p in self._family(i):
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    total += t.user + t.system
        return total

    def rss_bytes(self) -> list[int]:
        """Resident set size of each worker (its children added in)."""
        out = []
        for i in range(len(self._ps)):
            rss = 0
            for p in self._family(i):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            out.append(rss)
        return out

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a graceful drain), then SIGKILL whatever is still running.

        Children are signalled too and waited for: some frameworks run their worker in a
        child process that would otherwise outlive its parent."""
        family = [p for i in range(len(self._ps)) for p in self._family(i)[1:]]
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _, alive = psutil.wait_procs(family, timeout=max(0.1, deadline - time.monotonic()))
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        self.procs.clear()
        self._ps.clear()

    async def __aenter__(self) -> Fleet:
        try:
            await self.start()
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.stop)
