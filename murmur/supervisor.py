"""Keep N worker processes running: ``murmur worker --processes N`` and ``--reload``.

Python runs one thread of Python at a time, so using more than one core takes more
processes. Each child is a fresh interpreter (``python -m murmur worker ...``): nothing is
pickled or inherited from the parent, and a child fails exactly like a single worker.

* Child ``i`` always gets the same command (so the same ``--consumer-id <base>-<i>``): a
  restarted child rejoins its groups under its old name and picks up its own pending
  work at once instead of waiting for the reclaim timeout.
* A child that exits unasked is restarted with exponential backoff (0.5 s doubling to
  30 s), reset once it has stayed up for ``stable_after`` seconds. Exit code 2 (usage or
  configuration error) is not retried: it would fail the same way forever.
* Children run in their own session, so a terminal's Ctrl-C reaches only the
  supervisor, which forwards one SIGTERM to each child and waits for them to drain
  (exit 0 when all drained cleanly). A second signal SIGKILLs them.
* Children get ``MURMUR_SUPERVISOR_PID`` and stop by themselves if the supervisor dies
  (even by SIGKILL), so no orphan keeps consuming.
* With ``watch`` (``--reload``), a change to a ``.py`` file under those paths drains and
  restarts every child; a child that fails to load (exit 2) waits for the next change.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

SUPERVISOR_PID_ENV = "MURMUR_SUPERVISOR_PID"
EXIT_USAGE = 2
_TICK = 0.1


@dataclass(slots=True)
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    reload_pending: bool = False
    stopped_rc: int | None = None  # exit code after the supervisor asked it to stop


def describe_exit(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-rc).name}"
        return f"signal {-rc}"
    return f"code {rc}"


class Supervisor:
    """Runs ``command(i)`` for ``i in range(processes)`` until SIGTERM/SIGINT."""

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        processes: int,
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        stable_after: float = 10.0,
        watch: Sequence[str | Path] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.command = command
        self.children = [_Child(i) for i in range(processes)]
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.watch = [str(p) for p in watch]
        self.env = {
            **(env if env is not None else os.environ),
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        self.log = structlog.get_logger("murmur.supervisor")
        self.restarts = 0
        self._signals = 0
        self._changed = threading.Event()
        self._stop_watch = threading.Event()
        self._fatal: int | None = None

    # signals ---------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1

    def _install(self) -> list[tuple[signal.Signals, Any]]:
        return [(s, signal.signal(s, self._on_signal)) for s in (signal.SIGINT, signal.SIGTERM)]

    # children --------------------------------------------------------------------------

    def _start(self, child: _Child) -> None:
        argv = list(self.command(child.index))
        child.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv, env=self.env, start_new_session=True, stdin=subprocess.DEVNULL
        )
        child.started = time.monotonic()
        child.reload_pending = False
        self.log.info("worker_process_started", index=child.index, pid=child.proc.pid)

    def _signal(self, child: _Child, sig: signal.Signals) -> None:
        if child.proc is not None and child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(sig)

    def _reap(self, child: _Child, now: float, stopping: bool) -> None:
        assert child.proc is not None
        rc = child.proc.returncode
        pid, child.proc = child.proc.pid, None
        if stopping:
            child.stopped_rc = rc
            self.log.info("worker_process_stopped", index=child.index, pid=pid, exit=rc)
            return
        if child.reload_pending:
            child.restart_at = now
            return
        uptime = now - child.started
        if uptime >= self.stable_after:
            child.failures = 0
        if rc == EXIT_USAGE and self.watch:
            child.restart_at = float("inf")  # bad code or config: wait for the fix
            self.log.warning(
                "worker_process_exited",
                index=child.index,
                exit=describe_exit(rc),
                action="waiting for a file change",
            )
            return
        if rc == EXIT_USAGE:
            self.log.error(
                "worker_process_config_error",
                index=child.index,
                hint="the worker exited with a usage/configuration error; not restarting",
            )
            self._fatal = EXIT_USAGE
            return
        delay = min(self.max_backoff, self.backoff * 2**child.failures)
        child.failures += 1
        child.restart_at = now + delay
        self.restarts += 1
        self.log.warning(
            "worker_process_exited",
            index=child.index,
            pid=pid,
            exit=describe_exit(rc),
            uptime_s=round(uptime, 1),
            restart_in_s=round(delay, 2),
        )

    # reload ------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        import watchfiles

        for changes in watchfiles.watch(
            *self.watch,
            watch_filter=watchfiles.PythonFilter(),
            stop_event=self._stop_watch,
            raise_interrupt=False,
        ):
            names = sorted({Path(p).name for _, p in changes})
            self.log.info("code_changed", files=names[:5], action="restarting workers")
            self._changed.set()

    def _reload(self) -> None:
        self._changed.clear()
        for child in self.children:
            child.reload_pending = True
            child.failures = 0
            if child.proc is None:
                child.restart_at = 0.0
            else:
                self._signal(child, signal.SIGTERM)

    # main loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Supervise until asked to stop; returns the process exit code."""
        previous = self._install()
        watcher = None
        if self.watch:
            watcher = threading.Thread(target=self._watch_loop, name="murmur-reload", daemon=True)
            watcher.start()
        self.log.info(
            "supervisor_started",
            processes=len(self.children),
            pid=os.getpid(),
            reload=bool(self.watch),
        )
        try:
            return self._loop()
        finally:
            self._stop_watch.set()
            for sig, handler in previous:
                signal.signal(sig, handler)

    def _loop(self) -> int:
        stopping = killed = False
        for child in self.children:
            self._start(child)
        while True:
            now = time.monotonic()
            if (self._signals or self._fatal is not None) and not stopping:
                stopping = True
                self.log.info("supervisor_stopping", action="draining workers")
                for child in self.children:
                    self._signal(child, signal.SIGTERM)
            if self._signals >= 2 and not killed:
                killed = True
                self.log.warning("supervisor_killing", reason="second signal")
                for child in self.children:
                    self._signal(child, signal.SIGKILL)
            if self._changed.is_set() and not stopping:
                self._reload()
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    self._reap(child, now, stopping)
                if child.proc is None and not stopping and now >= child.restart_at:
                    self._start(child)
            if stopping and all(c.proc is None for c in self.children):
                break
            time.sleep(_TICK)
        if self._fatal is not None:
            return self._fatal
        if killed:
            return 130
        codes = [c.stopped_rc for c in self.children if c.stopped_rc is not None]
        clean = all(rc == 0 for rc in codes)
        self.log.info("supervisor_stopped", drained=clean, restarts=self.restarts)
        return 0 if clean else 1


def orphan_watchdog(interval: float = 1.0) -> threading.Thread | None:
    """In a supervised child: SIGTERM ourselves (graceful drain) if the supervisor dies."""
    raw = os.environ.get(SUPERVISOR_PID_ENV, "")
    if not raw.isdigit():
        return None
    parent = int(raw)
    if os.getppid() != parent:  # not our parent (the variable leaked): do nothing
        return None

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="murmur-orphan-watchdog", daemon=True)
    thread.start()
    return thread
