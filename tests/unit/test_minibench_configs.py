"""The embedded mini benchmark's committed configs match its builder, and its model list is sane
(nothing is built here; the reduced leaderboard run is tests/integration/test_readme.py)."""

from __future__ import annotations

from pathlib import Path

from fusion_bench_fw.offline import minibench

REPO_ROOT = Path(__file__).resolve().parents[2]


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
    assert list(minibench.ALL_TASKS[:8]) == list(minibench.TASKS)
    assert len(groups["irrelevant"]) == 16 and len(groups["noisy"]) == 16
    # the Fashion-based task models train on disjoint slices
    fashion = [s.slice_index for s in specs if s.task.source == "fashion"]
    assert len(set(fashion)) == len(fashion)


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
