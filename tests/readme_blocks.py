"""The command blocks of README.md, with the marker that says whether the tests run them.

Every ```bash block carries one marker on the line before it:

* ``<!-- tested offline: NAME -->``: ``tests/integration/test_readme.py`` runs it as written;
* ``<!-- not run by the tests: WHY -->``: it needs what a test machine lacks (a hub, an hour).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = re.compile(r"<!-- (tested offline: (?P<name>[\w-]+)|not run by the tests: (?P<why>.+?)) -->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    name: str | None  # tested offline under this name, or None
    why: str | None  # why it is not run, or None
    text: str


def bash_blocks(path: Path = README) -> list[Block]:
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            marker = MARKER.fullmatch(lines[i - 1].strip()) if i else None
            name = marker["name"] if marker else None
            why = marker["why"] if marker else None
            out.append(Block(i + 1, name, why, "\n".join(lines[i + 1 : end]) + "\n"))
            i = end
        i += 1
    return out


def block_marked(name: str) -> str:
    """The text of the block marked ``tested offline: name``."""
    (block,) = [b for b in bash_blocks() if b.name == name]
    return block.text
