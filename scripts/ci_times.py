"""Write the times one ``.ci/run`` measured (install, full suite, fast loop, the README's tested
blocks) with where they were measured, for the README to quote (``CI_TIMES_OUT``).

    python scripts/ci_times.py REPO OUT.json   # reads INSTALL_S, TESTS_S, FAST_S, TOTAL_S, JUNIT
                                              # and OPENCLIP_INSTALL_S, OPENCLIP_TESTS_S when set
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import machine_info  # noqa: E402  (the machine as every results file describes it)

# the README's command blocks that tests/integration/test_readme.py runs, by test name
README_BLOCKS = {
    "test_the_tiny_example": "tiny_example",
    "test_the_quick_leaderboard_every_row_runs": "quick_leaderboard",
}


def git(repo: str, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main(repo: str, out: str) -> None:
    cases = {c.get("name"): float(c.get("time", 0)) for c in ET.parse(os.environ["JUNIT"]).iter("testcase")}
    result = dict(
        install_seconds=float(os.environ["INSTALL_S"]),
        tests_seconds=float(os.environ["TESTS_S"]),
        fast_loop_seconds=float(os.environ["FAST_S"]),
        total_seconds=float(os.environ["TOTAL_S"]),
        readme_blocks_seconds={v: cases.get(k) for k, v in README_BLOCKS.items()},
        tests=len(cases),
        git_commit=git(repo, "rev-parse", "HEAD"),
        git_dirty=bool(git(repo, "status", "--porcelain")),
        command=".ci/run (CI_TIMES_OUT set)",
        machine=machine_info(),
        packages={d: metadata.version(d) for d in ("fusion-bench-fw", "fusion-bench", "torch", "transformers")},
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    for key, name in (
        ("OPENCLIP_INSTALL_S", "openclip_install_seconds"),
        ("OPENCLIP_TESTS_S", "openclip_tests_seconds"),
    ):
        if os.environ.get(key):  # the OpenCLIP stage, when it ran
            result[name] = float(os.environ[key])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-- times written to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
