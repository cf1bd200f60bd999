"""README.md's command blocks marked ``tested offline``, run as written, by bash, in a folder laid
out like the checkout after the set-up (``.venv`` and ``benchmarks`` linked to the real ones), with
the caches of the built pools in a temporary folder and no hub.

* ``tiny-example``: the one-minute example (builds the tiny pool, runs FW-soft through the CLI);
* ``quick-leaderboard``: the smoke leaderboard: every row runs (FusionBench's in-tree FW rows are
  listed as needing CUDA), on the 4 tasks ``--quick`` evaluates. Needs the mini benchmark's data
  (Fashion-MNIST from the Debian package, the [bench] extra): skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench_scripts import load_script
from readme_blocks import block_marked

from fusion_bench_fw.offline import OFFLINE_ENV, minibench
from fusion_bench_fw.offline.cli import report_accuracies

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_block(block: str, tmp_path: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """``block`` in bash (-e -u -o pipefail) from a folder holding ``.venv`` (this interpreter's
    environment) and ``benchmarks`` (the checkout's), as the README's commands expect."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the README's commands use .venv: run the tests from a virtual environment")
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    (workdir / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    (workdir / "benchmarks").symlink_to(REPO_ROOT / "benchmarks", target_is_directory=True)
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=workdir,
        env={**os.environ, **OFFLINE_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_tiny_example(tmp_path):
    from fusion_bench_fw.offline.tiny_clip import DEFAULT_TASKS

    proc = run_block(block_marked("tiny-example"), tmp_path, {"FUSION_BENCH_CACHE_DIR": str(tmp_path / "cache")}, 900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workdir = tmp_path / "checkout"
    assert "export FUSION_BENCH_FW_TINY_ROOT=" in proc.stdout  # the builder's last line
    (report,) = (workdir / "outputs").rglob("program_report.json")
    (history,) = (workdir / "outputs").rglob("fw_history.json")
    assert (history.parent / "fw_history.png").stat().st_size > 0
    assert len(json.loads(history.read_text())["iterations"]) == 3
    accuracies = report_accuracies(json.loads(report.read_text()))
    assert set(DEFAULT_TASKS) <= set(accuracies) and all(0 <= accuracies[t] <= 1 for t in DEFAULT_TASKS)


@pytest.fixture(scope="module")
def mini_data():
    """Skips (when the test runs, not when the module is collected) without the benchmark's data."""
    try:
        minibench.load_fashion()
    except FileNotFoundError as exc:
        pytest.skip(f"needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist): {exc}")
    missing = [m for m in ("mlxtend", "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the [bench] extra ({missing} missing)")


def test_the_quick_leaderboard_every_row_runs(tmp_path, mini_data):
    """Every row ok, in order, on the 4 tasks --quick evaluates, except FusionBench's in-tree FW rows
    (they call .cuda()) and its known upstream failures; fine-tuning helps, and every merge scores
    above chance by at least 5 points (quick build: few steps, small sets)."""
    rows_data = load_script("_rows")
    methods = list(rows_data.ALL_METHODS)
    root = tmp_path / "minibench"
    proc = run_block(block_marked("quick-leaderboard"), tmp_path, {minibench.ENV_VAR: str(root)}, 3000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "checkout" / "outputs" / "minibench_leaderboard"  # the default --out, relative to the cwd
    result = json.loads((out / "leaderboard.json").read_text())
    md = (out / "leaderboard.md").read_text()
    assert (out / "leaderboard.png").stat().st_size > 0
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == methods  # every row present, in order
    for m in methods:
        assert f"| {m} |" in md
    tasks = list(minibench.TASKS[:4])
    assert result["tasks"] == tasks
    in_tree = {"fusionbench_fw_soft", "fusionbench_fw_hard"}
    for m in in_tree:
        assert rows[m]["status"] == "needs CUDA", (m, rows[m])
    for m, reason in rows_data.UPSTREAM_FAILURES.items():  # FusionBench's own bug: the row stays, with its error
        assert rows[m]["status"] == "ok" or reason.split()[0] in rows[m]["error"], (m, rows[m])
    for m in [m for m in methods if m not in in_tree and m not in rows_data.UPSTREAM_FAILURES]:
        r = rows[m]
        assert r["status"] == "ok", (m, r)
        assert set(r["accuracy"]) == set(tasks), (m, r["accuracy"])
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values())
        assert abs(r["average"] - sum(r["accuracy"].values()) / len(tasks)) < 1e-6
        assert r["seconds"] >= 0
    manifest = json.loads((root / "manifest.json").read_text())
    chance = sum(1 / len(manifest["models"][t]["classnames"]) for t in tasks) / len(tasks)
    assert rows["individual"]["average"] > rows["pretrained"]["average"] + 0.05
    for m in ("simple_average", "task_arithmetic", "tsv_m", "fw_hard", "fw_soft"):
        assert chance + 0.05 < rows[m]["average"] < rows["individual"]["average"] + 0.02, (m, chance)
