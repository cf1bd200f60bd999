"""Multi-process FW through Lightning Fabric, end to end through the ``fusion_bench`` CLI.

``fabric.devices=2 fabric.strategy=ddp fabric.accelerator=cpu`` launches two gloo ranks;
each computes the gradient on its share of the fixed batches and scores its share of the
candidate vertices, and the sums over ranks give every rank the single-process values. The
run must take the same selections and end at the same merge as one process.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors.torch import load_file

from fusion_bench_fw.offline import tiny_lm

ARGS = [
    "method=fw_hard",
    "modelpool=fw_tiny_gpt2_cls",
    "taskpool=fw_tiny_gpt2_cls",
    "method.n_per_task=32",
    "method.batch_size=8",
    "method.progress=false",
    "method.max_iters=6",
    "fabric.accelerator=cpu",
]


def _run(run_fusion_bench, root, *extra):
    start = time.perf_counter()
    result = run_fusion_bench([*ARGS, *extra], env={tiny_lm.ENV_VAR: str(root)}, tiny=False).check()
    seconds = time.perf_counter() - start
    history = json.loads((result.log_dir / "fw_history.json").read_text())
    theta = load_file(result.log_dir / "fw_checkpoint.safetensors")
    return result, history, theta, seconds


def test_two_ddp_cpu_processes_match_one_process(run_fusion_bench, tiny_lm_root):
    one, h1, theta1, t1 = _run(run_fusion_bench, tiny_lm_root)
    two, h2, theta2, t2 = _run(run_fusion_bench, tiny_lm_root, "fabric.devices=2", "fabric.strategy=ddp")
    print(f"\n1 process: {t1:.1f} s wall; 2 processes (ddp, gloo): {t2:.1f} s wall")
    assert h1["extra"]["world_size"] == 1 and h2["extra"]["world_size"] == 2
    assert [r["selected"] for r in h2["iterations"]] == [r["selected"] for r in h1["iterations"]]
    assert [r["loss"] for r in h2["iterations"]] == pytest.approx([r["loss"] for r in h1["iterations"]], rel=1e-5)
    assert h2["final_loss"] == pytest.approx(h1["final_loss"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(h2["coefficients"]), torch.tensor(h1["coefficients"]), rtol=1e-6, atol=1e-9)
    assert set(theta1) == set(theta2)
    for key in theta1:
        torch.testing.assert_close(theta2[key], theta1[key], rtol=1e-5, atol=1e-6)
    assert two.accuracies() == pytest.approx(one.accuracies(), abs=1e-6)
