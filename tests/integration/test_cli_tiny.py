"""The real ``fusion_bench`` CLI on the tiny offline CLIP pool, from any folder."""

from __future__ import annotations

import pytest
import yaml

from fusion_bench_fw.offline.tiny_clip import DEFAULT_TASKS

TINY_TASKS = list(DEFAULT_TASKS)  # the default build's tasks, in its order


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_cfg_job_from_repo_root_and_elsewhere(run_fusion_bench, repo_root, tmp_path, where):
    # From the repo root, FusionBench takes ./config as its primary config dir, which lacks
    # fabric_model_fusion; the search-path plugin's fallback must bring FusionBench's back.
    cwd = repo_root if where == "repo_root" else tmp_path
    run = run_fusion_bench(
        ["--cfg", "job", "method=task_arithmetic", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip"], cwd=cwd
    ).check()
    cfg = yaml.safe_load(run.stdout)
    assert cfg["_target_"] == "fusion_bench.programs.FabricModelFusionProgram"
    assert cfg["modelpool"]["_target_"] == "fusion_bench_fw.CLIPVisionModelPoolWithTasks"
    assert list(cfg["modelpool"]["models"]) == ["_pretrained_"] + TINY_TASKS
    assert list(cfg["taskpool"]["test_datasets"]) == TINY_TASKS


def test_task_arithmetic_end_to_end(run_fusion_bench, tmp_path, tiny_clip_manifest):
    run = run_fusion_bench(
        ["method=task_arithmetic", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip"], cwd=tmp_path
    ).check()
    assert run.report_path is not None and run.report_path.name == "program_report.json"
    assert run.report_path.parent == run.log_dir
    acc = run.accuracies()
    assert set(acc) == set(TINY_TASKS) | {"average"}
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert acc["average"] == pytest.approx(sum(acc[t] for t in TINY_TASKS) / len(TINY_TASKS))
    # merging the task vectors helps over the pre-trained model (0.52 -> 0.76 on the default build)
    pretrained = tiny_clip_manifest["accuracy"]["_pretrained_"]
    assert acc["average"] > sum(pretrained[t] for t in TINY_TASKS) / len(TINY_TASKS) + 0.1


def test_pretrained_from_repo_root_matches_builder(run_fusion_bench, repo_root, tiny_clip_manifest):
    # method=dummy returns the pre-trained model; FusionBench's CLIP task pool must reproduce
    # the zero-shot accuracies the builder measured in-process (same data, heads and scale).
    run = run_fusion_bench(["method=dummy", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip"], cwd=repo_root).check()
    acc = run.accuracies()
    n_test = tiny_clip_manifest["params"]["n_test"]
    for task in TINY_TASKS:
        assert acc[task] == pytest.approx(tiny_clip_manifest["accuracy"]["_pretrained_"][task], abs=1 / n_test + 1e-6)


def test_the_val_taskpool_scores_the_validation_splits(run_fusion_bench, tmp_path, tiny_clip_manifest):
    # taskpool=fw_tiny_clip_val: the same tasks on data/<task>/val; the pre-trained model's
    # accuracies there are the builder's in-process validation accuracies
    run = run_fusion_bench(
        ["method=dummy", "modelpool=fw_tiny_clip", "taskpool=fw_tiny_clip_val"], cwd=tmp_path
    ).check()
    acc = run.accuracies()
    assert set(acc) == set(TINY_TASKS) | {"average"}
    n_val = tiny_clip_manifest["params"]["n_val"]
    for task in TINY_TASKS:
        assert acc[task] == pytest.approx(
            tiny_clip_manifest["val_accuracy"]["_pretrained_"][task], abs=1 / n_val + 1e-6
        )
