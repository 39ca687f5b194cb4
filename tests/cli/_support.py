"""Drive ``python -m murmur`` as a subprocess, the way users run it.

The CLI runs with cwd = tests/cli (so ``cliapp`` is importable as APP, like ./app.py
for a user), the repository on PYTHONPATH, JSON logs, and none of the caller's MURMUR_*
settings except the test fixtures' own (MURMUR_TEST_*).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

APP_DIR = Path(__file__).resolve().parent
ROOT = APP_DIR.parent.parent
T = TypeVar("T")


def cli_env(broker_url: str | None = None, prefix: str = "cli", **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MURMUR_") or k.startswith("MURMUR_TEST_")
    }
    path = [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        MURMUR_TEST_PREFIX=prefix,
        MURMUR_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        COLUMNS="120",
    )
    if broker_url:
        env["MURMUR_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def murmur(
    *args: str, env: dict[str, str], timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one murmur command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "murmur", *args],
        cwd=APP_DIR,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The CLI's error contract: no traceback, one ``error:`` line on stderr."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


class Proc:
    """A background murmur process whose stderr goes to a file we can poll."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, cwd: Path = APP_DIR
    ) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "murmur", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._file,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"process exited {self.proc.returncode}:\n{self.output()}")
            return self.output().count(text) >= count

        wait_until(seen, timeout, f"{text!r} x{count} in the log:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-n:])

    def events(self, name: str) -> list[dict[str, Any]]:
        """JSON log lines whose event is ``name``."""
        out = []
        for line in self.output().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == name:
                    out.append(doc)
        return out

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._file.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_worker(env: dict[str, str], log: Path, *args: str, timeout: float = 20.0) -> Proc:
    """``murmur worker cliapp ARGS`` once it has joined its groups."""
    proc = Proc(["worker", "cliapp", *args], env, log)
    try:
        proc.wait_for('"worker_started"', timeout)
    except BaseException:
        proc.close()
        raise
    return proc


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
