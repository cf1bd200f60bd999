"""CLIPVisionModelPoolWithTasks registers custom CLIP task names with FusionBench."""

from __future__ import annotations

import logging

import pytest


def test_pool_registers_clip_tasks():
    from fusion_bench.tasks.clip_classification import get_classnames_and_templates
    from omegaconf import OmegaConf

    from fusion_bench_fw import CLIPVisionModelPoolWithTasks

    tasks = OmegaConf.create(
        {
            "fwtest_a": {"classnames": ["cat", "dog"], "templates": ["a {}.", "the {}!"]},
            "fwtest_b": {"classnames": ["x", "y", "z"]},
        }
    )
    pool = CLIPVisionModelPoolWithTasks({"_pretrained_": "/nonexistent", "fwtest_a": "/nonexistent"}, clip_tasks=tasks)
    assert pool.clip_task_names == ["fwtest_a", "fwtest_b"]
    assert pool.model_names == ["fwtest_a"]
    names, templates = get_classnames_and_templates("fwtest_a")
    assert names == ["cat", "dog"] and [t("cat") for t in templates] == ["a cat.", "the cat!"]
    names, templates = get_classnames_and_templates("fwtest_b")
    assert names == ["x", "y", "z"] and [t("x") for t in templates] == ["a photo of a x."]
    assert pool.config.clip_tasks.fwtest_b.classnames == ["x", "y", "z"]


def test_registration_is_idempotent_and_warns_on_change(caplog):
    from fusion_bench.tasks.clip_classification import get_classnames

    from fusion_bench_fw.fusionbench.modelpool import register_clip_task

    register_clip_task("fwtest_c", ["one", "two"])
    with caplog.at_level(logging.WARNING):
        register_clip_task("fwtest_c", ["one", "two"])
    assert "Replacing" not in caplog.text
    with caplog.at_level(logging.WARNING):
        register_clip_task("fwtest_c", ["one", "three"])
    assert "Replacing" in caplog.text
    assert get_classnames("fwtest_c") == ["one", "three"]
    with pytest.raises(ValueError):
        register_clip_task("fwtest_d", ["a"], ["no placeholder"])


def test_load_local_dataset_registers_from_classlabel(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Value
    from fusion_bench.tasks.clip_classification import get_classnames

    from fusion_bench_fw.fusionbench.modelpool import load_local_dataset

    feats = Features({"x": Value("int32"), "label": ClassLabel(names=["left", "right"])})
    Dataset.from_dict({"x": list(range(5)), "label": [0, 1, 0, 1, 0]}, features=feats).save_to_disk(str(tmp_path / "d"))
    ds = load_local_dataset(str(tmp_path / "d"), num_samples=3, register_as="fwtest_e")
    assert len(ds) == 3
    assert get_classnames("fwtest_e") == ["left", "right"]
