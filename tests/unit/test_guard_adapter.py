"""method.guard=true through FusionBench: the hold-out samples are other rows of the same train splits
(never the objective's), the run records the guard's verdicts, and impossible settings fail early."""

from __future__ import annotations

import pytest
from composed import run_method

from fusion_bench_fw.fusionbench.objectives.sampling import fixed_subset_indices
from fusion_bench_fw.fusionbench.options import split_options

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
FAST = ["method.n_per_task=16", "method.batch_size=16", "method.progress=false", "method.targets=null"]


@pytest.mark.parametrize("n, n_guard, seed", [(100, 50, 0), (16, 8, 3), (7, 30, 11)])
def test_the_guard_samples_follow_the_objectives_in_one_seeded_order(n, n_guard, seed):
    available = 200
    objective = fixed_subset_indices(available, n, seed, "task")
    guard = fixed_subset_indices(available, n_guard, seed, "task", offset=n)
    assert not set(objective) & set(guard)
    assert objective + guard == fixed_subset_indices(available, n + n_guard, seed, "task")  # the same order


@pytest.mark.parametrize("bad", [{"guard_samples": 0}, {"guard_samples": -3}, {"guard": "yes"}])
def test_bad_guard_options_fail_at_construction(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        split_options("soft", bad)


@pytest.mark.slow  # a few FW iterations on the tiny CLIP pool: full suite only
@pytest.mark.parametrize("variant", ["fw_hard", "fw_soft"])
def test_a_guarded_run_records_its_verdicts(tiny_env, tmp_path, variant):
    start = ["method.init=task_arithmetic"] if variant == "fw_soft" else []  # FW-hard's default already is
    merged, history, _ = run_method(
        [f"method={variant}", "method.guard=true", "method.guard_samples=8", "method.max_iters=2", *start, *FAST],
        tmp_path,
    )
    assert history["config"]["holdout_guard"] is True
    assert history["extra"]["guard"] is True and history["extra"]["guard_samples"] == 8
    report = history["extra"]["guard_start"]
    assert sorted(report["kept"] + [r["model"] for r in report["refused"]]) == sorted(
        n for n in history["basis"] if n != "_pretrained_"
    )
    assert report["holdout_kept"] <= report["holdout_start"]
    for record in history["iterations"]:
        guard = record["guard"]
        assert guard["step"] in ("kept", "none") or guard["step"].startswith("rejected"), guard
        for refused in guard["refused"]:
            assert refused["holdout_without"] <= refused["holdout_with"]


def test_too_few_samples_for_the_guard_is_an_error_that_says_what_to_lower(tiny_env, tmp_path):
    with pytest.raises(ValueError, match="guard_samples"):
        run_method(["method=fw_hard", "method.guard=true", "method.guard_samples=100000", *FAST], tmp_path)
