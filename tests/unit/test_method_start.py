"""init=<a FusionBench merging method>: the run starts exactly from the merge FusionBench's own
method gives on the same pool (with init_options applied), computed once and reused on resume."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
from composed import compose, method_config, run_method
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
FAST = ["method.n_per_task=16", "method.batch_size=16", "method.progress=false", "method.targets=null"]


def fusionbench_merge(method: str, *overrides: str) -> dict[str, torch.Tensor]:
    """FusionBench's own method on the tiny pool, as `fusion_bench method=<method> <overrides>` runs it."""
    from fusion_bench.utils import instantiate

    cfg = compose("modelpool=fw_tiny_clip", "taskpool=dummy", f"method={method}", *overrides)
    merged = instantiate(cfg.method).run(instantiate(cfg.modelpool))
    return {k: v.detach().float() for k, v in merged.state_dict().items()}


@pytest.mark.slow  # whole merges on the tiny CLIP pool (seconds): full suite only
@pytest.mark.parametrize(
    "init, fb_method, options, fb_overrides",
    [
        ("simple_average", "simple_average", [], []),
        (
            "tsv_m",
            "task_singular_vector/TaskSingularVectorMerging",
            ["+method.init_options={alpha:1.5}"],
            ["method.alpha=1.5"],
        ),
    ],
)
def test_the_start_is_fusionbench_methods_merge(tiny_env, tmp_path, init, fb_method, options, fb_overrides):
    merged, history, _ = run_method(
        ["method=fw_hard", f"method.init={init}", *options, "method.max_iters=1", *FAST], tmp_path
    )
    (start_file,) = glob.glob(str(tmp_path / "vertex_cache" / "starts" / f"{init}-*.safetensors"))
    start = load_file(start_file)
    reference = fusionbench_merge(fb_method, *fb_overrides)
    for key in history["keys"]:
        torch.testing.assert_close(start[key].float(), reference[key], atol=1e-6, rtol=1e-6)
    assert "__init_path__" in history["basis"]  # the start is held as the run's start checkpoint
    assert history["extra"]["init"] == init and history["extra"]["init_path"] is None
    # a second run with the same options reuses the merge instead of running the method again
    mtime = Path(start_file).stat().st_mtime_ns
    again, _, _ = run_method(["method=fw_hard", f"method.init={init}", *options, "method.max_iters=1", *FAST], tmp_path)
    assert glob.glob(str(tmp_path / "vertex_cache" / "starts" / "*")) == [start_file]
    assert Path(start_file).stat().st_mtime_ns == mtime
    for key in history["keys"]:
        torch.testing.assert_close(again[key], merged[key])


def test_unknown_init_and_misplaced_init_options_are_refused():
    from fusion_bench_fw.fusionbench.options import RunOptions

    with pytest.raises(ValueError, match="or a FusionBench merging method.*got 'tsv'"):
        RunOptions(init="tsv")
    with pytest.raises(ValueError, match="init_options is read only with init=<a FusionBench method>"):
        RunOptions(init="task_arithmetic", init_options={"alpha": 1})
    assert method_config(["method=fw_soft", "method.init=wudi"]).method.init == "wudi"
