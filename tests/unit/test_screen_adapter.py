"""method.screen=true through FusionBench: the screen's verdicts are in the history, the models it
refuses are in neither the start nor the LMO, and a FusionBench method's start runs on the kept
models only (:func:`fusion_bench_fw.fusionbench.modelpool.subpool`)."""

from __future__ import annotations

import pytest
from composed import method_config, run_method

from fusion_bench_fw.fusionbench.options import split_options

pytestmark = pytest.mark.usefixtures("one_thread_private_cache")
TARGETS = "method.targets=[tiny_colors,tiny_stripes,tiny_quadrants,tiny_sizes]"
FAST = ["method.n_per_task=16", "method.batch_size=16", "method.progress=false", "method.guard_samples=8", TARGETS]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"screen": "yes"}, "screen must be true or false"),
        ({"screen_share": 0}, "screen_share"),
        ({"screen_share": 1.5}, "screen_share"),
    ],
)
def test_bad_screen_values_fail_at_construction(bad, message):
    with pytest.raises(ValueError, match=message):
        split_options("soft", bad)


def test_the_method_start_sees_only_the_kept_models(tiny_env):
    """subpool: the pool's models but the left-out ones, the pretrained model kept, the pool unchanged."""
    from fusion_bench.utils import instantiate

    from fusion_bench_fw.fusionbench.modelpool import subpool

    pool = instantiate(method_config(["modelpool=fw_tiny_clip_irrelevant"]).modelpool)
    before = list(pool.model_names)
    sub = subpool(pool, ["tiny_colors", "tiny_sizes"])
    assert sub.model_names == ["tiny_colors", "tiny_sizes"] and sub.has_pretrained
    assert list(pool.model_names) == before and subpool(pool, before) is pool


@pytest.mark.slow  # a few FW iterations on the tiny CLIP pool: full suite only
def test_a_screened_run_keeps_the_refused_models_out_of_the_merge(tiny_env, tmp_path):
    merged, history, _ = run_method(
        [
            "modelpool=fw_tiny_clip_irrelevant",
            "method=fw_soft",
            "method.init=simple_average",
            "method.screen=true",
            "method.max_iters=2",
            "method.inner_steps=2",
            *FAST,
        ],
        tmp_path,
    )
    report = history["extra"]["screen"]
    members = ["tiny_colors", "tiny_stripes", "tiny_quadrants", "tiny_sizes", "tiny_colors_permuted"]
    assert sorted(report["kept"] + [r["model"] for r in report["refused"]]) == sorted(members)
    base, best = report["pretrained"], report["best_drop"]
    for name, losses in report["losses"].items():  # the rule, model by model
        drops = {t: base[t] - losses[t] for t in losses}
        assert (name in report["kept"]) == any(drops[t] > 0 and drops[t] >= 0.5 * best[t] for t in losses)
    for refused in report["refused"]:
        assert refused["model"] not in history["basis"] and refused["model"] not in history["vertices"]
    assert report["kept"] and all(m in history["vertices"] for m in report["kept"])
