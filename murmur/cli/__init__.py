"""The ``murmur`` command line (typer). ``main()`` is the console-script entry point.

One module per command group; shared bits in ``_common``. Every error is one line on
stderr and a non-zero exit code (0 ok, 1 failure, 2 usage/configuration, 3 timeout);
``--debug`` adds the traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer

from murmur._version import __version__
from murmur.cli import dlq
from murmur.cli._common import cli_errors
from murmur.cli.bench import bench
from murmur.cli.demo import demo
from murmur.cli.status import SCHEMA, status
from murmur.cli.submit import submit
from murmur.cli.worker import PRECEDENCE, worker

app = typer.Typer(
    name="murmur",
    help=(
        "Run a fleet of signed, reliable Python agents behind Redis Streams, NATS JetStream "
        "or Kafka.\n\n"
        "[bold]Examples[/bold]\n\n"
        "  murmur demo                                   # see it work in seconds\n"
        "  murmur worker app -b redis://localhost:6379   # host ./app.py's agents\n"
        '  murmur submit wordcount \'{"text": "hi"}\' -w   # run one task\n'
        "  murmur status --watch                         # the fleet and its queues\n\n"
        "Set MURMUR_BROKER_URL once instead of passing --broker to every command. "
        "Exit codes: 0 ok, 1 failure, 2 usage/configuration, 3 timeout."
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"murmur {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The murmur command line."""


app.command(epilog=PRECEDENCE)(worker)
app.command()(submit)
app.command(epilog=SCHEMA)(status)
app.add_typer(dlq.app, name="dlq")
app.command()(demo)
app.command()(bench)


def main() -> None:
    """Console-script entry point (``murmur``, ``python -m murmur``)."""
    with cli_errors():
        app(prog_name="murmur")


__all__ = ["app", "main"]
