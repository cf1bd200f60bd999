"""benchmarks/leaderboard.py --update: rerun rows replace their old rows, the others stay."""

from __future__ import annotations

import pytest
from bench_scripts import load_script


@pytest.fixture(scope="module")
def leaderboard():
    return load_script("leaderboard")


def row(method, accs, status="ok"):
    return dict(method=method, status=status, accuracy=accs, average=sum(accs.values()) / len(accs), seconds=1.0)


def board(rows, settings=None):
    return dict(modelpool="p", taskpool="p", tasks=["a", "b"], settings=settings or {"x": 1}, rows=rows)


def test_update_replaces_rerun_rows_and_keeps_the_rest(leaderboard):
    old = board(
        [
            row("individual", {"a": 0.8, "b": 1.0}),
            row("task_arithmetic", {"a": 0.4, "b": 0.5}),
            row("fw_hard", {"a": 0.1, "b": 0.1}),
        ]
    )
    new = board([row("fw_soft", {"a": 0.6, "b": 0.6}), row("fw_hard", {"a": 0.4, "b": 0.8})], {"x": 2})
    merged = leaderboard.update(old, new)
    assert [r["method"] for r in merged["rows"]] == ["individual", "task_arithmetic", "fw_hard", "fw_soft"]
    fw_hard = merged["rows"][2]
    assert fw_hard["accuracy"] == {"a": 0.4, "b": 0.8}
    assert fw_hard["normalized"] == pytest.approx((0.4 / 0.8 + 0.8 / 1.0) / 2)
    assert merged["rows"][1]["accuracy"] == {"a": 0.4, "b": 0.5}
    assert merged["settings"] == {"x": 1} and merged["rerun_settings"] == {"x": 2}
    assert merged["rerun"] == ["fw_hard", "fw_soft"]


def test_update_refuses_another_pool(leaderboard):
    other = dict(board([]), tasks=["a"])
    with pytest.raises(SystemExit, match="other pools or tasks"):
        leaderboard.update(board([]), other)


@pytest.fixture(scope="module")
def ablation():
    return load_script("ablation")


@pytest.mark.slow  # composes every ablation row with Hydra (seconds)
def test_every_ablation_row_composes_and_changes_what_it_says(ablation, tmp_path):
    """Each FW row of benchmarks/ablation.py composes with Hydra into options FWHard/FWSoft accept,
    and differs from its block's base row (the paper preset) in the options it names."""
    from composed import method_config
    from omegaconf import OmegaConf

    from fusion_bench_fw.fusionbench.options import split_options

    rows = ablation.fw_rows(ablation.FULL, ["tiny_colors", "tiny_stripes"])
    resolved = {}
    for name, _, args in rows:
        args = [a.replace(ablation.WEIGHTS, str(tmp_path / "w.pt")) for a in args]
        method = OmegaConf.to_container(method_config(args).method, resolve=True)
        variant = "hard" if method.pop("_target_").endswith("FWHard") else "soft"
        split_options(variant, method)  # accepted by the algorithm
        resolved[name] = method
    for name, _, args in rows:
        if name in ("fw_hard_paper", "fw_soft_paper") or "textbook" in name:
            continue
        base = resolved["fw_hard_paper" if name.startswith("hard") else "fw_soft_paper"]
        changed = {k for k in resolved[name] if resolved[name][k] != base.get(k)}
        named = {a.split("=")[0].removeprefix("method.") for a in args if a.startswith("method.")}
        assert changed and changed <= named, (name, changed, named)


def test_text_wudi_row_leaves_out_the_backbones_word_embeddings(tmp_path):
    """The text pool's WUDI row composes, and its exclude_keys names a tensor a BERT backbone (what
    SequenceClassificationBackbonePool hands out) really has: WUDI's (models x rows x rows) product
    on a 30522-row embedding is 15 GB, and frozen embeddings have zero task vectors (NaN in WUDI)."""
    from composed import method_config
    from omegaconf import OmegaConf
    from transformers import BertConfig, BertModel

    rows = load_script("_rows")
    assert rows.TEXT_ROWS["wudi"] in rows.TEXT_METHODS and "wudi" not in rows.TEXT_METHODS
    args = rows.method_args("wudi_text", rows.FULL, tmp_path, [])
    method = OmegaConf.to_container(method_config(args).method, resolve=True)
    assert method["_target_"].endswith("WUDIMerging")
    tiny = BertModel(
        BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    )
    keys = tiny.state_dict()
    assert method["exclude_keys"] == ["embeddings.word_embeddings.weight"]
    assert all(k in keys and keys[k].ndim == 2 for k in method["exclude_keys"])


def test_tuned_rows_are_the_choices_that_differ_from_the_own_setting(leaderboard):
    tuning = {
        "methods": [
            {
                "method": "tsv_m",
                "grid": [{"method.alpha": 1.0}, {"method.alpha": 1.5}],
                "chosen_setting": {"method.alpha": 1.5},
            },
            {
                "method": "ties_merging",
                "grid": [{"method.scaling_factor": 0.3}],
                "chosen_setting": {"method.scaling_factor": 0.3},
            },
            {"method": "task_arithmetic_fw_samples", "grid": [{"s": 0.3}, {"s": 0.4}], "chosen_setting": {"s": 0.4}},
            {"method": "wudi", "status": "not run"},
            {"method": "iso_c", "grid": [{"s": 1}, {"s": 2}], "chosen_setting": {"s": 2}},
        ]
    }
    rows = leaderboard.tuned_rows(tuning, ["task_arithmetic", "tsv_m", "ties_merging", "wudi"])
    assert rows == {
        "tsv_m@val": ("tsv_m", {"method.alpha": 1.5}),
        "task_arithmetic@fw_samples": ("task_arithmetic", {"s": 0.4}),
    }


def test_aggregate_over_builds_is_the_mean_and_sample_std(leaderboard):
    import statistics

    builds = [
        board([row("task_arithmetic", {"a": a, "b": b}), row("fw_hard", {"a": 0.5, "b": 0.5}, status=st)])
        for a, b, st in [(0.4, 0.6, "ok"), (0.5, 0.7, "ok"), (0.9, 0.2, "failed")]
    ]
    for b in builds:
        leaderboard.normalise(b["rows"], b["tasks"])
    ta, fw = leaderboard.aggregate(builds, [0, 1, 2])
    averages = [0.5, 0.6, 0.55]
    assert ta["per_seed"] == pytest.approx(averages)
    assert ta["average"] == pytest.approx(statistics.mean(averages))
    assert ta["average_std"] == pytest.approx(statistics.stdev(averages))
    assert ta["accuracy"]["a"] == pytest.approx(0.6) and ta["accuracy_std"]["b"] == pytest.approx(
        statistics.stdev([0.6, 0.7, 0.2])
    )
    assert fw["status"] == "failed/ok" and fw["average"] is None  # one failed build: no mean
    md = leaderboard.to_markdown(dict(board([ta, fw]), build_seeds=[0, 1, 2]))
    assert (
        "| task_arithmetic |  | 60.0 ± 26.5 | 50.0 ± 26.5 | 55.0 ± 5.0 | 50.0 | 60.0 | 55.0 |" in md
        and "55.0 ± 5.0" in md
        and "failed/ok" in md
    )


def test_a_choice_the_row_already_runs_adds_no_row(leaderboard):
    tuning = {
        "methods": [
            {
                "method": "fw_soft",
                "grid": [{"method.inner_lr": 0.001}, {"method.inner_lr": 0.003}],
                "chosen_setting": {"method.inner_lr": 0.003},
            }
        ]
    }
    assert leaderboard.tuned_rows(tuning, ["fw_soft"], lambda m, s: True) == {}
    assert leaderboard.tuned_rows(tuning, ["fw_soft"], lambda m, s: False) == {
        "fw_soft@val": ("fw_soft", {"method.inner_lr": 0.003})
    }
