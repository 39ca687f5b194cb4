"""Every code block of docs/quickstart.md runs, in order, against a real Redis.

Files (blocks with ``title="..."``) are written to a temp dir, shell and Python blocks run
there, a ``test: background`` block (the worker) runs until the end and is then stopped
with SIGTERM, which must drain it. The page's ``redis://localhost:6379`` becomes the test
Redis and its agent name a unique one, so runs never share a queue.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import redis

from tests.docs._markdown import DOCS, blocks
from tests.docs._procs import Background, doc_env, wait_until

PAGE = DOCS / "quickstart.md"
DOC_URL = "redis://localhost:6379"
DOC_AGENT = "summarize"


def test_quickstart_page_has_the_readme_commands() -> None:
    text = PAGE.read_text()
    assert 'pip install ".[demo]" && murmur demo' in text


def test_every_quickstart_block_runs(redis_url: str, unique: str, tmp_path: Path) -> None:
    agent_name = f"{DOC_AGENT}_{unique}"
    env = doc_env(tmp_path, MURMUR_BROKER_URL=redis_url)

    def adapt(code: str) -> str:
        return re.sub(rf"\b{DOC_AGENT}\b", agent_name, code.replace(DOC_URL, redis_url))

    workers: list[Background] = []
    ran: list[int] = []
    try:
        for block in blocks(PAGE):
            if block.directive == "skip" or block.lang not in ("bash", "python"):
                continue
            code = adapt(block.code)
            if block.title:
                (tmp_path / block.title).write_text(code)
                continue
            argv = (
                [sys.executable, "-c", code]
                if block.lang == "python"
                else ["bash", "-euo", "pipefail", "-c", code]
            )
            if block.directive == "background":
                worker = Background(argv, tmp_path, env, tmp_path / f"line{block.line}.log")
                workers.append(worker)
                worker.wait_for('"worker_started"')
                continue
            done = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (
                f"docs/quickstart.md block at line {block.line} failed "
                f"({done.returncode}):\n{code}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
            ran.append(block.line)
        assert len(ran) >= 3, "the quickstart should run submit, status and a publisher"
        assert workers, "the quickstart should start a worker"
        for worker in workers:
            # What the page promises: SIGTERM drains the worker and it stops cleanly.
            worker.terminate()
            wait_until(lambda w=worker: '"worker_stopped"' in w.output(), 10, "the worker to drain")
            assert "Traceback" not in worker.output(), worker.output()[-3000:]
    finally:
        for worker in workers:
            worker.kill()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"*{agent_name}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
