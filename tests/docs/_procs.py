"""Run documentation commands the way a reader would: subprocesses in a temp dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.docs._markdown import ROOT


def murmur_bin(tmp: Path) -> str:
    """A directory holding a ``murmur`` command for this interpreter.

    The console script of an installed murmur when there is one (``pip install -e .``),
    else a shim running ``python -m murmur`` (a checkout used without installing).
    """
    here = Path(sys.executable).parent
    if shutil.which("murmur", path=str(here)):
        return str(here)
    shim = tmp / "bin" / "murmur"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m murmur "$@"\n')
    shim.chmod(0o755)
    return str(shim.parent)


def doc_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without its MURMUR_* settings; ``murmur`` and this
    interpreter's ``python`` first on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MURMUR_") or k.startswith("MURMUR_TEST_")
    }
    env.update(
        PATH=os.pathsep.join(
            [murmur_bin(tmp), str(Path(sys.executable).parent), env.get("PATH", "")]
        ),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        MURMUR_LOG_FORMAT="json",
        COLUMNS="120",
    )
    env.update(extra)
    return env


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Background:
    """A shell command running in its own process group, output in a log file."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            return False

        wait_until(seen, timeout, f"{text!r} in the output:\n{self.output()[-3000:]}")

    def terminate(self, timeout: float = 20.0) -> None:
        """SIGTERM the whole group (the shell and the command it runs) and wait."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
