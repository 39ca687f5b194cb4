"""The documentation site builds with ``mkdocs build --strict`` and every page is in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.docs._markdown import DOCS, ROOT

CONFIG = yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in _nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in _nav_files(value)]
    return []


def test_every_page_is_in_the_nav_and_exists() -> None:
    nav = _nav_files(CONFIG["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(nav) == pages
    for required in ("wire-format.md", "benchmarks.md", "reliability.md", "cli.md", "api.md"):
        assert required in nav


def test_readme_keeps_its_first_block_and_links_to_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme.startswith(
        "# murmur\n\n```bash\n"
        'pip install ".[demo]" && murmur demo                       '
        "# a broker, 3 worker processes, 300 tasks, a summary\n"
        'pip install -e ".[test,dev]" && python -m pytest          '
        "# the test suite against real Redis, NATS and Kafka\n```\n"
    )
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target


def test_api_reference_covers_the_public_names() -> None:
    api = (DOCS / "api.md").read_text()
    for name in (
        "murmur.runtime.agent.agent", "murmur.Agent", "murmur.TaskContext", "murmur.Worker",
        "murmur.Client", "murmur.TaskHandle", "murmur.Keyring", "murmur.messages",
        "murmur.errors", "murmur.brokers.base",
    ):  # fmt: skip
        assert f"::: {name}\n" in api, name


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    for page in ("index.html", "wire-format/index.html", "cli/index.html", "api/index.html"):
        assert (tmp_path / page).is_file(), page
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("TaskContext", "Keyring", "TaskHandle", "TaskConsumer"):
        assert name in api
    cli = (tmp_path / "cli" / "index.html").read_text()
    assert "murmur worker" in cli and "--metrics-port" in cli
