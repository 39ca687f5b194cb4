"""mkdocs hooks for the murmur docs, and the CLI reference generator.

The CLI reference (docs/cli.md) is generated from the typer app itself, so it cannot
drift from ``murmur --help``:

* ``mkdocs build`` regenerates it on the fly (``on_page_markdown`` below);
* ``python docs/_hooks.py`` rewrites docs/cli.md so the file reads right on GitHub too;
* tests/docs/test_cli_reference.py checks that every command and flag appears in it.
"""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLI_PAGE = "cli.md"
_DEFAULT = re.compile(r"\s*\[default: ([^\]]*)\]\s*$")

HEADER = """\
# CLI reference

<!-- Generated from the typer app by `python docs/_hooks.py`; do not edit by hand. -->

Every command is `murmur <command>` (or `python -m murmur <command>`). Errors are one line
on stderr and an exit code: **0** ok, **1** failure (task error or rejected, broker
unreachable), **2** usage or configuration, **3** timeout, **130** interrupted.
Set `MURMUR_BROKER_URL` once instead of passing `--broker` to every command; flags beat
environment variables, which beat defaults ([Configuration](configuration.md)).
"""


def _plain(text: str) -> str:
    """Rich markup (``[bold]``, ``\\[``) -> plain text."""
    from rich.text import Text

    return Text.from_markup(text).plain


def _help_to_markdown(text: str) -> str:
    """A command's help text: paragraphs stay text, indented lines become code blocks."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if block:
            out.extend(["```bash", *block, "```", ""])
            block.clear()

    for raw in _plain(text).strip("\n").splitlines():
        line = raw.rstrip()
        if line.startswith("  ") and line.strip():
            block.append(line.strip())
            continue
        flush()
        if line.strip() in ("Examples", "Example"):
            out.append(f"**{line.strip()}**")
            out.append("")
        else:
            out.append(_text(line.strip()))
    flush()
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def _text(text: str) -> str:
    """Plain help text as Markdown text: angle brackets must not become HTML tags."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n", " ").strip()


def _param_row(param: Any) -> tuple[str, str, str, str]:
    help_text = _plain(getattr(param, "help", None) or "")
    default = ""
    m = _DEFAULT.search(help_text)
    if m:
        default, help_text = m.group(1), help_text[: m.start()]
    elif not getattr(param, "required", False):
        value = param.default
        if callable(value):
            value = None
        if getattr(param, "is_flag", False):
            default = ""
        elif value not in (None, (), []):
            default = str(getattr(value, "value", value))
    envvar = param.envvar if getattr(param, "show_envvar", False) and param.envvar else ""
    return (help_text.strip(), default, envvar if isinstance(envvar, str) else "", "")


def _option_names(param: Any) -> str:
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    shown = ", ".join(f"`{n}`" for n in names)
    if not getattr(param, "is_flag", False):
        shown += f" `{_metavar(param)}`"
    return shown


def _metavar(param: Any) -> str:
    """The value placeholder, across typer versions (vendored click or real click)."""
    if param.metavar:
        return str(param.metavar)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "{" + ",".join(str(m.value) for m in annotation) + "}"
    click_type = getattr(param, "type", None)
    choices = getattr(click_type, "choices", None)
    if choices:
        return "{" + ",".join(str(c) for c in choices) + "}"
    name = getattr(click_type, "name", "") or getattr(annotation, "__name__", "") or "value"
    return str(name).upper()


def _command_section(path: list[str], command: Any) -> list[str]:
    ctx_name = " ".join(path)
    lines = [f"## `{ctx_name}`", ""]
    args = [p for p in command.params if p.param_type_name == "argument"]
    opts = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    usage = [ctx_name]
    if opts:
        usage.append("[OPTIONS]")
    for a in args:
        name = (a.metavar or a.name).upper()
        usage.append(name if a.required else f"[{name}]")
    if getattr(command, "commands", None):
        usage.append("COMMAND")
    lines += ["```text", " ".join(usage), "```", ""]
    if command.help:
        lines += [_help_to_markdown(command.help), ""]
    if args:
        lines += ["| argument | description |", "|---|---|"]
        for a in args:
            name = (a.metavar or a.name).upper()
            text = _plain(getattr(a, "help", None) or "")
            req = "" if a.required else " (optional)"
            lines.append(f"| `{name}`{req} | {_cell(text)} |")
        lines.append("")
    if opts:
        lines += ["| option | description | default | environment |", "|---|---|---|---|"]
        for p in opts:
            text, default, env, _ = _param_row(p)
            lines.append(
                f"| {_option_names(p)} | {_cell(text)} | "
                f"{_cell(default) and f'`{_cell(default)}`'} | {env and f'`{env}`'} |"
            )
        lines += ["", "`-h`, `--help` prints this help.", ""]
    epilog = getattr(command, "epilog", None)
    if epilog:
        lines += ["```text", _plain(epilog).strip("\n"), "```", ""]
    return lines


def walk(command: Any, path: list[str]) -> list[tuple[list[str], Any]]:
    """Every command of the tree, depth first, groups before their subcommands."""
    found = [(path, command)]
    for name, sub in (getattr(command, "commands", None) or {}).items():  # CLI order
        found += walk(sub, [*path, name])
    return found


def cli_tree() -> Any:
    sys.path.insert(0, str(ROOT))
    import typer.main

    from murmur.cli import app

    return typer.main.get_command(app)


def render_cli() -> str:
    """The whole CLI reference page as Markdown."""
    root = cli_tree()
    lines = [HEADER]
    commands = walk(root, ["murmur"])
    lines.append("| command | what it does |")
    lines.append("|---|---|")
    for path, command in commands[1:]:
        summary = _plain(command.get_short_help_str(limit=200)) if command.help else ""
        anchor = "-".join(path)
        lines.append(f"| [`{' '.join(path)}`](#{anchor}) | {_cell(summary)} |")
    lines.append("")
    for path, command in commands[1:]:
        section = _command_section(path, command)
        section[0] = f"## `{' '.join(path)}` {{ #{'-'.join(path)} }}"
        lines += section
    return "\n".join(lines).rstrip() + "\n"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """mkdocs hook: serve a freshly generated CLI reference."""
    if page.file.src_uri == CLI_PAGE:
        return render_cli()
    return markdown


if __name__ == "__main__":
    target = ROOT / "docs" / CLI_PAGE
    target.write_text(render_cli())
    print(f"wrote {target.relative_to(ROOT)}")
