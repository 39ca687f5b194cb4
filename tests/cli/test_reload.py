"""``murmur worker --reload``: a saved change restarts the worker with the new code."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli._support import Proc, cli_env

pytest.importorskip("watchfiles")

CODE = """
from murmur import agent

@agent(name="{name}")
async def version(x: None) -> int:
    return {version}
"""


def submit(env: dict[str, str], cwd: Path, agent: str) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "murmur", "submit", agent, "--wait", "--timeout", "10"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    output: int = json.loads(proc.stdout)["output"]
    return output


def test_reload_picks_up_changes(redis_url: str, unique: str, tmp_path: Path) -> None:
    app = tmp_path / f"{unique}_app.py"
    app.write_text(CODE.format(name=unique, version=1))
    env = cli_env(redis_url, unique)
    args = ["worker", app.stem, "--reload", "--heartbeat", "1"]
    with Proc(args, env, tmp_path / "w.log", cwd=tmp_path) as proc:
        proc.wait_for('"worker_started"')
        assert submit(env, tmp_path, unique) == 1
        app.write_text(CODE.format(name=unique, version=2))
        proc.wait_for('"worker_started"', count=2)
        assert proc.events("code_changed")
        assert submit(env, tmp_path, unique) == 2
        assert proc.stop(signal.SIGINT) == 0, proc.tail()
