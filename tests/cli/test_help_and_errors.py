"""Every command explains itself, and every error is one line with a meaningful exit code."""

from __future__ import annotations

import pytest

from tests.cli._support import cli_env, murmur, one_line_error

COMMANDS = [
    [],
    ["worker"],
    ["submit"],
    ["status"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "replay"],
    ["dlq", "purge"],
    ["demo"],
    ["bench"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "murmur")
def test_help_has_an_example(command: list[str]) -> None:
    proc = murmur(*command, "--help", env=cli_env())
    assert proc.returncode == 0, proc.stderr
    assert "Example" in proc.stdout
    assert "Usage: murmur" in proc.stdout


def test_version() -> None:
    from murmur import __version__

    proc = murmur("--version", env=cli_env())
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"murmur {__version__}"


def test_worker_help_documents_precedence() -> None:
    out = murmur("worker", "--help", env=cli_env()).stdout
    for name in ("MURMUR_BROKER_URL", "MURMUR_SIGNING_KEYS", "MURMUR_CONCURRENCY",
                 "MURMUR_PREFETCH", "MURMUR_LOG_FORMAT", "MURMUR_LOG_LEVEL"):  # fmt: skip
        assert name in out
    assert "a flag beats the environment, which beats the default" in out


def test_bench_needs_a_broker_and_rejects_unknown_options() -> None:
    proc = murmur("bench", env=cli_env())
    assert proc.returncode == 2
    assert "no broker" in one_line_error(proc)
    proc = murmur("bench", "--requests", "10", env=cli_env())
    assert proc.returncode == 2
    assert "No such option: --requests" in proc.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["worker", "nosuchmodule"], 2, "cannot import 'nosuchmodule'"),
        (["worker", "brokenapp"], 2, "fails on import, on purpose"),
        (["worker", "cliapp:nothing"], 2, "has no attribute 'nothing'"),
        (["worker", "cliapp.py"], 2, "use the module name instead"),
        (["worker", "cliapp", "--agents", "cli-echo,nope"], 2, "unknown agent 'nope'"),
        (["worker", "cliapp"], 2, "no broker"),
        (["worker", "cliapp", "--broker", "redis://127.0.0.1:1"], 1, "broker unavailable"),
        (["worker", "cliapp", "--broker", "redsi://x"], 2, "unknown broker scheme"),
        (["submit", "cli-echo", "{oops", "-b", "redis://127.0.0.1:1"], 2, "not valid JSON"),
        (["submit", "cli-echo", "{}", "-b", "nats:/x"], 2, "has no scheme"),
        (["submit", "cli-echo", "{}", "-b", "memory://"], 2, "memory://"),
        (["submit", "bad.name", "{}", "-b", "redis://127.0.0.1:1"], 2, "invalid agent name"),
        (["submit", "cli-echo", "{}"], 2, "no broker"),
        (["submit", "cli-echo", "{}", "-b", "redis://127.0.0.1:1", "-w"], 1, "unavailable"),
        (["status", "-b", "nats://127.0.0.1:1"], 1, "broker unavailable"),
        (["dlq", "list", "x", "-b", "redis://127.0.0.1:1"], 1, "broker unavailable"),
        (["dlq", "replay", "x", "-b", "redis://127.0.0.1:1"], 2, "--id ID"),
        (["dlq", "purge", "x", "-b", "redis://127.0.0.1:1"], 2, "--yes"),
        (["worker", "cliapp", "--reload", "--processes", "0"], 2, None),  # typer usage error
    ],
)
def test_errors_are_one_line(args: list[str], code: int, needle: str | None) -> None:
    proc = murmur(*args, env=cli_env())
    assert proc.returncode == code, proc.stderr
    if needle is None:
        assert "Traceback" not in proc.stderr
        return
    assert needle in one_line_error(proc)


def test_debug_shows_the_traceback() -> None:
    proc = murmur("submit", "cli-echo", "{}", "-b", "redis://127.0.0.1:1", "--debug", env=cli_env())
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr


def test_env_values_are_validated() -> None:
    proc = murmur("worker", "cliapp", env=cli_env("redis://127.0.0.1:1", MURMUR_CONCURRENCY="x"))
    assert proc.returncode == 2
    assert "MURMUR_CONCURRENCY" in proc.stderr
    assert "Traceback" not in proc.stderr
