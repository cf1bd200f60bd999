"""Every command block of README.md says whether the tests run it, so a new one cannot go
untested unnoticed; the ones marked ``tested offline`` are the ones test_readme.py runs."""

from __future__ import annotations

import re
from pathlib import Path

from readme_blocks import bash_blocks

TEST_README = Path(__file__).resolve().parents[1] / "integration" / "test_readme.py"


def test_every_bash_block_is_marked():
    blocks = bash_blocks()
    assert len(blocks) >= 4
    unmarked = [b.line for b in blocks if b.name is None and b.why is None]
    assert unmarked == [], f"README.md bash blocks without a marker (lines {unmarked}): see tests/readme_blocks.py"


def test_the_tested_blocks_are_the_ones_test_readme_runs():
    names = [b.name for b in bash_blocks() if b.name]
    assert len(names) == len(set(names))
    run = set(re.findall(r'block_marked\("([\w-]+)"\)', TEST_README.read_text()))
    assert set(names) == run
