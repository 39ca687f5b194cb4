"""A griffe extension for the API reference: reStructuredText bits become Markdown.

murmur's docstrings use Sphinx roles (``:class:`Client```, ``:meth:`~x.y```) and
doctest lines (``>>> ...``) that Markdown would print literally or as quotes; this
turns roles into inline code (``Client``, ``y`` for a ``~``-shortened path) and
doctest lines into ``pycon`` code blocks before mkdocstrings renders them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|exc|data|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _doctests(text: str) -> str:
    out: list[str] = []
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith((">>>", "...")) and (block or line.lstrip()[:3] == ">>>"):
            block.append(line.strip())
            continue
        if block:
            out += ["```pycon", *block, "```"]
            block = []
        out.append(line)
    return "\n".join(out[:-1])


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _doctests(_ROLE.sub(_code, obj.docstring.value))
