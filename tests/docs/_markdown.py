"""Fenced code blocks of a Markdown page, with the test directives written before them.

A block may be preceded (on the line right before its fence) by an HTML comment such as
``<!-- test: skip (reason) -->`` or ``<!-- test: background -->``; the comment is
invisible on the rendered page and tells the docs tests how to treat the block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
_DIRECTIVE = re.compile(r"<!--\s*test:\s*(?P<word>[\w-]+)(?P<rest>[^>]*)-->")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')


@dataclass(frozen=True)
class Block:
    lang: str
    info: str
    code: str
    line: int  # 1-based line of the opening fence
    directive: str | None  # "skip", "background", ... or None

    @property
    def title(self) -> str | None:
        m = _TITLE.search(self.info)
        return m.group("title") if m else None


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` in order (nested fences are not supported)."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(m.group("indent")) :])
            i += 1
        directive = None
        if start > 0 and (d := _DIRECTIVE.search(lines[start - 1])):
            directive = d.group("word")
        lang = info.split()[0] if info else ""
        out.append(Block(lang, info, "\n".join(body) + "\n", start + 1, directive))
        i += 1
    return out
