"""``murmur bench``: placeholder until the benchmark runner lands (benchmarks issue)."""

from __future__ import annotations

import typer

from murmur.cli._common import EXIT_USAGE, error_line


def bench(ctx: typer.Context) -> None:
    """Load benchmark (not available yet: the runner lands with the benchmarks issue).

    [bold]Example[/bold]

      murmur bench --help
    """
    error_line(
        "the benchmark runner is not part of this release yet; it lands with the "
        "benchmarks issue (see benchmarks/ in the repository)"
    )
    raise typer.Exit(EXIT_USAGE)
