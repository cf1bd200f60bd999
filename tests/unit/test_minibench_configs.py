"""The embedded mini benchmark's committed configs match its builder, and its model list is sane
(nothing is built here; the reduced leaderboard run is tests/integration/test_minibench.py)."""

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
    assert [s.name for s in groups["task"]] == list(minibench.TASKS)
    assert len(groups["irrelevant"]) == 16 and len(groups["noisy"]) == 16
    # the Fashion-based task models train on disjoint slices
    fashion = [s.slice_index for s in specs if s.task.source == "fashion"]
    assert len(set(fashion)) == len(fashion)
