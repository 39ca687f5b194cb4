"""docs/cli.md documents every command and every flag of the real CLI.

The page is generated from the typer app (``python docs/_hooks.py``; ``mkdocs build``
regenerates it on the fly), so this fails only when a command or flag was added after
the file was last generated: run ``python docs/_hooks.py`` to refresh it.
"""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType
from typing import Any

import pytest

from tests.docs._markdown import DOCS

PAGE = (DOCS / "cli.md").read_text()


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("murmur_docs_hooks", DOCS / "_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _hooks()
COMMANDS: list[tuple[list[str], Any]] = HOOKS.walk(HOOKS.cli_tree(), ["murmur"])[1:]
STALE = "docs/cli.md is stale: run `python docs/_hooks.py`"


def test_the_cli_has_the_documented_commands() -> None:
    names = {" ".join(path[1:]) for path, _ in COMMANDS}
    for expected in ("worker", "submit", "status", "dlq", "dlq list", "dlq replay", "dlq purge"):
        assert expected in names
    assert {"demo", "bench"} <= names


@pytest.mark.parametrize("path", [" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_a_section(path: str) -> None:
    assert re.search(rf"^## `{re.escape(path)}`", PAGE, re.MULTILINE), f"{path}: {STALE}"


@pytest.mark.parametrize(
    ("path", "flag"),
    [
        (" ".join(p), opt)
        for p, command in COMMANDS
        for param in command.params
        if param.param_type_name == "option" and not param.hidden
        for opt in param.opts
    ],
)
def test_every_flag_is_documented(path: str, flag: str) -> None:
    start = PAGE.index(f"## `{path}`")
    end = PAGE.find("\n## ", start + 1)
    assert f"`{flag}`" in PAGE[start : end if end > 0 else None], f"{path} {flag}: {STALE}"


def test_generated_page_matches_the_live_cli_structure() -> None:
    fresh = HOOKS.render_cli()
    headings = re.findall(r"^## .*$", fresh, re.MULTILINE)
    assert headings == re.findall(r"^## .*$", PAGE, re.MULTILINE), STALE


def test_env_vars_of_the_cli_are_documented_on_the_configuration_page() -> None:
    config = (DOCS / "configuration.md").read_text()
    for _, command in COMMANDS:
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                assert envvar in config, envvar
