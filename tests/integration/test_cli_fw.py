"""FWHard and FWSoft through the real ``fusion_bench`` CLI on the tiny offline CLIP pool.

Both variants, task-wise and layer-wise, from the repository root (whose ./config would hide
FusionBench's own configs without the search-path plugin's fallback) and from another folder.
Each run must print per-task accuracies into ``program_report.json``, write the FW history
next to it, and merge into something better than the pre-trained model.
"""

from __future__ import annotations

import json

import pytest

from fusion_bench_fw.offline.tiny_clip import DEFAULT_TASKS

TINY_TASKS = list(DEFAULT_TASKS)  # the default build's tasks, in its order

FAST = ["method.max_iters=3", "method.n_per_task=32", "method.progress=false"]


@pytest.mark.parametrize(
    "method,granularity,where",
    [
        ("fw_hard", "layer", "repo_root"),
        ("fw_hard", "task", "elsewhere"),
        ("fw_soft", "task", "repo_root"),
        ("fw_soft", "layer", "elsewhere"),
    ],
)
def test_fw_end_to_end(run_fusion_bench, repo_root, tmp_path, tiny_clip_manifest, method, granularity, where):
    args = [
        f"method={method}",
        f"method.granularity={granularity}",
        *FAST,
        "modelpool=fw_tiny_clip",
        "taskpool=fw_tiny_clip",
    ]
    if method == "fw_soft":
        args.append("method.inner_steps=10")
    run = run_fusion_bench(args, cwd=repo_root if where == "repo_root" else tmp_path).check()

    acc = run.accuracies()
    assert set(acc) == set(TINY_TASKS) | {"average"}
    assert acc["average"] == pytest.approx(sum(acc[t] for t in TINY_TASKS) / len(TINY_TASKS))
    pretrained = tiny_clip_manifest["accuracy"]["_pretrained_"]
    assert acc["average"] > sum(pretrained[t] for t in TINY_TASKS) / len(TINY_TASKS) + 0.05

    history = json.loads((run.log_dir / "fw_history.json").read_text())
    assert history["variant"] == method[3:]
    assert history["config"]["granularity"] == granularity
    assert history["tasks"] == TINY_TASKS  # targets default to the pool's train splits
    assert len(history["iterations"]) == 3 and history["stop_reason"] == "max_iters"
    losses = [it["loss"] for it in history["iterations"]] + [history["final_loss"]]
    if method == "fw_soft":  # its inner search may stay put, so the objective never goes up
        assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0]
    for it in history["iterations"]:
        assert it["gap"] >= -1e-6  # the Frank-Wolfe gap of a minimiser over the hull is never negative
        picked = it["selected"] if isinstance(it["selected"], list) else list(it["selected"])
        assert set(picked) <= set(history["vertices"])
    if history["coefficients"] is not None:  # theta = sum_i alpha_i basis_i with alpha on the simplex
        for column in zip(*history["coefficients"]):
            assert sum(column) == pytest.approx(1.0, abs=1e-6)
