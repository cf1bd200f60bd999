"""FWHard and FWSoft through the real ``fusion_bench`` CLI on the tiny offline CLIP pool.

Both variants, one layer-wise from the repository root (whose ./config would hide FusionBench's
own configs without the search-path plugin's fallback), one task-wise from another folder (each
variant at each granularity runs in process in the behaviour lock, tests/unit/test_behaviour_lock.py).
Each run must print per-task accuracies into ``program_report.json``, write the FW history
next to it with its picture, log its per-iteration scalars to TensorBoard, and merge into
something better than the pre-trained model; the picture can be redrawn from the history.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys

import pytest

from fusion_bench_fw.offline.tiny_clip import DEFAULT_TASKS

TINY_TASKS = list(DEFAULT_TASKS)  # the default build's tasks, in its order

FAST = ["method.max_iters=3", "method.n_per_task=32", "method.progress=false"]


def tensorboard_scalars(log_dir) -> dict[str, list[int]]:
    """``{tag: [steps]}`` of the TensorBoard event files the run's Fabric logger wrote."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: dict[str, list[int]] = {}
    for path in glob.glob(f"{log_dir}/**/events.out.tfevents.*", recursive=True):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            steps.setdefault(tag, []).extend(e.step for e in events.Scalars(tag))
    return steps


def assert_png(path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400, path


@pytest.mark.parametrize(
    "method,granularity,where",
    [
        ("fw_hard", "layer", "repo_root"),
        ("fw_soft", "task", "elsewhere"),
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
    for it in history["iterations"]:  # the per-tensor choices behind the picture's selection map
        assert len(it["chosen"][0]) == (len(history["keys"]) if granularity == "layer" else 1)
        assert {history["vertices"][i] for row in it["chosen"] for i in row} == set(it["selected"])

    # the picture next to the history, and the same picture redrawn from the history alone
    assert_png(run.log_dir / "fw_history.png")
    redrawn = tmp_path / "redrawn.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fusion_bench_fw.plot_history",
            str(run.log_dir / "fw_history.json"),
            "-o",
            str(redrawn),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_png(redrawn)

    # per-iteration scalars reached Fabric's TensorBoard logger, one point per iteration
    scalars = tensorboard_scalars(run.log_dir)
    expected = {"fw/loss", "fw/gap", "fw/grad_norm", *(f"fw/task_loss/{t}" for t in TINY_TASKS)}
    if method == "fw_hard":
        expected.add("fw/step_size")
    assert expected <= set(scalars), sorted(scalars)
    for tag in expected:
        assert sorted(scalars[tag]) == [0, 1, 2], (tag, scalars[tag])
