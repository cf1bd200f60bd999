"""FWHard's and FWSoft's options: one home (the dataclasses), every option shown by Hydra and
documented, and an option the chosen variant would ignore refused with a clear error."""

from __future__ import annotations

from dataclasses import fields

import pytest

from fusion_bench_fw import FWHard, FWSoft
from fusion_bench_fw.core import FrankWolfeConfig, HardConfig, SoftConfig
from fusion_bench_fw.fusionbench.options import option_classes, split_options


def compose_method(*overrides):
    from composed import compose
    from omegaconf import OmegaConf

    return OmegaConf.to_container(compose("taskpool=dummy", *overrides).method)


def option_names(variant):
    return [f.name for cls in option_classes(variant) for f in fields(cls)]


@pytest.mark.parametrize("cls,hard_only", [(FWSoft, "step_scale"), (FWSoft, "merge_fn"), (FWHard, "inner_steps")])
def test_an_option_of_the_other_variant_is_refused(cls, hard_only):
    other = "FW-hard" if cls is FWSoft else "FW-soft"
    mine = "FW-soft" if cls is FWSoft else "FW-hard"
    with pytest.raises(ValueError, match=rf"{hard_only} is an {other} option; {mine} never reads it"):
        cls(**{hard_only: 0.1})


def test_the_core_refuses_them_too():
    with pytest.raises(ValueError, match="step_scale is an FW-hard option; FW-soft never reads it"):
        FrankWolfeConfig.build("soft", step_scale=0.1)
    with pytest.raises(TypeError, match="HardConfig or a SoftConfig"):
        FrankWolfeConfig()
    assert isinstance(FrankWolfeConfig.build("hard"), HardConfig)
    assert isinstance(FrankWolfeConfig.build("soft", k=2, soft_select="topk"), SoftConfig)


def test_an_unknown_option_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown FW option\(s\) \['step_size'\]; FW-soft takes .*'inner_steps'"):
        FWSoft(step_size=0.1)


@pytest.mark.parametrize("method,variant", [("fw_hard", "hard"), ("fw_soft", "soft")])
def test_cfg_job_shows_every_option_with_the_dataclass_default(method, variant):
    composed = compose_method(f"method={method}")
    assert composed.pop("_target_") == f"fusion_bench_fw.FW{variant.title()}"
    assert list(composed) == option_names(variant)
    run, solver = split_options(variant, {})
    for cls, instance in zip(option_classes(variant), (run, solver)):
        for f in fields(cls):
            assert composed[f.name] == getattr(instance, f.name), f.name


def test_plus_method_option_of_the_other_variant_fails_on_the_cli_path():
    """``fusion_bench method=fw_soft +method.step_scale=0.1``: Hydra adds the key, the class refuses it."""
    from fusion_bench.utils import instantiate
    from omegaconf import OmegaConf

    composed = compose_method("method=fw_soft", "+method.step_scale=0.1")
    assert composed["step_scale"] == 0.1
    with pytest.raises(ValueError, match="step_scale is an FW-hard option; FW-soft never reads it"):
        instantiate(OmegaConf.create(composed))


def test_cli_values_are_typed_by_the_options():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="max_iters"):
        compose_method("method=fw_hard", "method.max_iters=many")


@pytest.mark.parametrize("cls,variant", [(FWHard, "hard"), (FWSoft, "soft")])
def test_every_option_is_documented_in_the_class_args(cls, variant):
    doc = cls.__doc__
    assert "Args:" in doc
    for name in option_names(variant):
        assert f"\n    {name}: " in doc, name
    other = "soft" if variant == "hard" else "hard"
    for name in set(option_names(other)) - set(option_names(variant)):
        assert f"\n    {name}: " not in doc, name


def test_fw_hard_and_fw_soft_defaults_differ_where_the_paper_says():
    hard_run, hard = split_options("hard", {})
    soft_run, soft = split_options("soft", {})
    assert (hard_run.init, hard.granularity, hard.include_init_vertex) == ("task_arithmetic", "layer", True)
    assert (soft_run.init, soft.granularity, soft.include_init_vertex) == ("pretrained", "task", False)


def test_k_with_per_task_selection_is_refused():
    with pytest.raises(ValueError, match="k=3 is not read by soft_select=per_task"):
        FrankWolfeConfig.build("soft", k=3)


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("task_weighting", "median", "unknown task_weighting 'median'"),
        ("seed", 1.5, "seed must be an integer"),
        ("targets", "tiny_colors", "targets must be null or a non-empty list"),
        ("init_models", 3, "init_models must be all, targets or a list"),
        ("init_scaling", "big", "init_scaling must be a number"),
        ("init", "file", "init=file needs method.init_path"),
    ],
)
def test_run_options_are_checked_when_the_algorithm_is_made(option, value, message):
    """Every run option fails at construction (seconds before any pool is read), naming itself."""
    with pytest.raises(ValueError, match=message):
        FWHard(**{option: value})
